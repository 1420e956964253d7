"""Pretraining and fine-tuning with the transformers ``Trainer`` (and so ``accelerate``)."""

from .checkpoints import CheckpointError, last_complete_checkpoint
from .collator import MEGDataCollator
from .data import (
    SubjectSplit,
    TrainingDataError,
    encode_labels,
    load_windows,
    split_subjects,
    subject_labels,
)
from .metrics import aggregate_by_subject, subject_metrics
from .pretrain import PretrainingArguments, pretrain, run_pretraining
from .rows import WindowRows
from .sampling import SensorGroupedSampler, SensorGroupedStream
from .streaming import index_shards, stream_windows
from .trainer import MEGTrainer

__all__ = [
    "CheckpointError",
    "MEGDataCollator",
    "MEGTrainer",
    "PretrainingArguments",
    "SensorGroupedSampler",
    "SensorGroupedStream",
    "SubjectSplit",
    "TrainingDataError",
    "WindowRows",
    "aggregate_by_subject",
    "encode_labels",
    "index_shards",
    "last_complete_checkpoint",
    "load_windows",
    "pretrain",
    "run_pretraining",
    "split_subjects",
    "stream_windows",
    "subject_labels",
    "subject_metrics",
]
