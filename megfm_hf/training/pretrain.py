"""Self-supervised masked-signal pretraining with the transformers ``Trainer``.

``run_pretraining`` is what ``megfm pretrain`` and ``accelerate launch scripts/pretrain.py``
call; :func:`pretrain` is the same run from Python with keyword arguments. The ``Trainer``
runs on ``accelerate``, so the same code trains on one CPU, one GPU (bf16) or many processes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import TrainerCallback, TrainingArguments

from ..data.processor import MEGProcessor
from ..modeling.configuration_megfm import MEGConfig
from ..modeling.modeling_megfm import MEGForMaskedSignalModeling
from .collator import MEGDataCollator
from .data import (
    SubjectSplit,
    TrainingDataError,
    check_dataset_matches_model,
    check_windows_match_model,
    load_windows,
    select_subjects,
    split_subjects,
    subject_labels,
)
from .export import export_model, load_dataset_processor
from .sampling import SensorGroupedStream, data_seed, step_windows
from .streaming import RepeatedStream, index_shards, shard_subject_labels, stream_windows
from .trainer import (
    LOADER_DEFAULTS,
    build_trainer,
    check_distributed_launch,
    run_from_command_line,
    seed_run,
    train_with_resume,
)

logger = logging.getLogger(__name__)

#: MEGConfig fields that ``PretrainingArguments`` can set for a model trained from scratch.
ARCHITECTURE_FIELDS = (
    "attention_mode",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_latents",
    "decoder_hidden_size",
    "decoder_num_layers",
    "decoder_num_attention_heads",
    "mask_ratio",
    "mask_sensor_fraction",
    "mask_time_fraction",
    "norm_patch_loss",
)


@dataclass
class PretrainingArguments:
    """What to pretrain on and which model (the optimiser settings are ``TrainingArguments``)."""

    dataset: str = field(metadata={"help": "dataset folder built by `megfm build-dataset`"})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "continue from this model folder or Hub id instead of a new model"},
    )
    test_fraction: float = field(
        default=0.2, metadata={"help": "fraction of subjects held out to measure reconstruction"}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the subject split"})
    mask_seed: int = field(default=0, metadata={"help": "seed of the collator's mask generator"})
    resume: bool = field(
        default=False, metadata={"help": "resume from the last complete checkpoint in output_dir"}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "stream windows from the dataset's Parquet shards (a record batch at a time, "
            "shuffled in a buffer) instead of reading the Arrow dataset; needs max_steps"
        },
    )
    shuffle_buffer: int = field(
        default=1024, metadata={"help": "windows in the streaming shuffle buffer"}
    )
    attention_mode: str = field(default="latent", metadata={"help": "latent, factorized or full"})
    hidden_size: int = field(default=256, metadata={"help": "encoder width"})
    num_hidden_layers: int = field(default=8, metadata={"help": "encoder blocks"})
    num_attention_heads: int = field(default=8, metadata={"help": "attention heads"})
    num_latents: int = field(default=8, metadata={"help": "latent queries per patch (latent mode)"})
    decoder_hidden_size: int = field(default=128, metadata={"help": "decoder width"})
    decoder_num_layers: int = field(default=2, metadata={"help": "decoder blocks"})
    decoder_num_attention_heads: int = field(
        default=4, metadata={"help": "decoder attention heads"}
    )
    mask_ratio: float = field(default=0.5, metadata={"help": "fraction of tokens hidden"})
    mask_sensor_fraction: float = field(
        default=0.3, metadata={"help": "share masked as whole sensors"}
    )
    mask_time_fraction: float = field(
        default=0.3, metadata={"help": "share masked as a time block"}
    )
    norm_patch_loss: bool = field(default=False, metadata={"help": "per-patch normalised targets"})

    def model_config(self, sampling_rate: float, patch_length: int) -> MEGConfig:
        """A new model's configuration, at the dataset's rate and patch length."""
        values = {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}
        return MEGConfig(sampling_rate=sampling_rate, patch_length=patch_length, **values)


#: ``TrainingArguments`` defaults suited to masked-signal pretraining (the command line and
#: :func:`pretrain` start from these; any of them can be overridden).
TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "megfm-pretraining",
    "max_steps": 1000,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "max_grad_norm": 1.0,
    "logging_steps": 50,
    "save_steps": 250,
    "save_total_limit": 2,
    "eval_strategy": "no",
    "report_to": [],
    **LOADER_DEFAULTS,
}


def new_model_config(config: MEGConfig | Mapping[str, Any]) -> MEGConfig:
    """A new model's configuration from a ``MEGConfig`` (copied) or a mapping of its fields.

    Raises
    ------
    TypeError
        When ``config`` is neither.
    ValueError
        When the mapping names a field ``MEGConfig`` does not have (a misspelt field would
        otherwise be stored and ignored).
    """
    if isinstance(config, MEGConfig):
        return copy.deepcopy(config)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a MEGConfig or a dict of its fields, got {type(config).__name__}."
        )
    known = MEGConfig().to_dict()
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(
            f"config names fields MEGConfig does not have: {unknown}; its fields are "
            f"{sorted(known)}."
        )
    return MEGConfig(**config)


def at_dataset_rate(config: MEGConfig, processor: MEGProcessor) -> MEGConfig:
    """A copy of ``config`` at the rate and patch length of the dataset's ``processor``.

    The windows dictate both, so they replace the configuration's values; a warning names
    every value that was set away from its default and is replaced. Every other field is kept.
    """
    dictated = {"sampling_rate": float(processor.sfreq), "patch_length": processor.patch_length}
    defaults = MEGConfig()
    replaced = {
        name: getattr(config, name)
        for name, value in dictated.items()
        if getattr(config, name) not in (value, getattr(defaults, name))
    }
    if replaced:
        logger.warning(
            "the dataset's windows set %s; the given config's %s replaced",
            ", ".join(f"{name}={dictated[name]}" for name in replaced),
            ", ".join(f"{name}={old}" for name, old in replaced.items()),
        )
    config = copy.deepcopy(config)
    for name, value in dictated.items():
        setattr(config, name, value)
    config.validate()
    return config


def run_pretraining(
    args: PretrainingArguments,
    training_args: TrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
    config: MEGConfig | None = None,
) -> Path:
    """Pretrain a masked-signal model and export it.

    ``callbacks`` are handed to the ``Trainer`` (logging, early stopping, timing). A new model
    is built from ``config`` when given, every field kept but the sampling rate and patch
    length, which the dataset sets (:func:`at_dataset_rate`); otherwise from the architecture
    fields of ``args``.

    Returns
    -------
    Path
        ``{output_dir}/model``: safetensors weights, ``config.json``, the remote code,
        ``preprocessor_config.json``, ``split.json`` (train and held-out subjects) and the
        training settings; ready for ``from_pretrained``, evaluation and the Hub.
    """
    dataset = None if args.streaming else load_windows(args.dataset)
    processor = load_dataset_processor(args.dataset)
    seed_run(training_args)
    if args.model_name_or_path:
        if config is not None:
            raise ValueError(
                "give either a config (a new model) or model_name_or_path (continue pretraining "
                f"{args.model_name_or_path}), not both."
            )
        model = MEGForMaskedSignalModeling.from_pretrained(args.model_name_or_path)
    elif config is not None:
        model = MEGForMaskedSignalModeling(at_dataset_rate(config, processor))
    else:
        model = MEGForMaskedSignalModeling(
            args.model_config(processor.sfreq, processor.patch_length)
        )
    processor.check_model_config(model.config)
    check_distributed_launch(training_args)
    if args.streaming:
        split, train, held_out = _streamed_split(args, training_args, processor, model.config)
    else:
        check_dataset_matches_model(dataset, model.config, name=args.dataset)
        labels = subject_labels(dataset)
        split = split_subjects(list(labels), args.test_fraction, args.split_seed, labels)
        train = select_subjects(dataset, split.train)
        held_out = select_subjects(dataset, split.test)
        logger.info(
            "pretraining on %d windows of %d subjects, %d held-out windows of %d subjects",
            len(train),
            len(split.train),
            len(held_out),
            len(split.test),
        )

    # One mask stream per process, so the ranks of a distributed run hide different tokens.
    collator = MEGDataCollator(
        model.config, draw_mask=True, seed=args.mask_seed + training_args.process_index
    )
    trainer = build_trainer(model, training_args, train, held_out, collator, callbacks=callbacks)
    train_with_resume(trainer, resume=args.resume)
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    return export_model(
        trainer,
        processor,
        split=split,
        metrics=metrics,
        arguments={"pretraining": {k: v for k, v in asdict(args).items() if k != "dataset"}},
    )


def _streamed_split(
    args: PretrainingArguments,
    training_args: TrainingArguments,
    processor: MEGProcessor,
    config: MEGConfig,
) -> tuple[SubjectSplit, Iterable[dict], datasets.IterableDataset | None]:
    """Split a dataset's shards by subject and stream each side (training windows grouped by
    sensor count unless the sampling strategy says otherwise)."""
    if training_args.max_steps <= 0:
        raise TrainingDataError(
            "streamed windows have no length, so --streaming needs --max_steps (a number of "
            "optimiser steps) rather than --num_train_epochs."
        )
    shards = index_shards(args.dataset)
    check_windows_match_model(
        [shard.sfreq for shard in shards], processor.window_samples, config, name=args.dataset
    )
    labels = shard_subject_labels(shards)
    split = split_subjects(list(labels), args.test_fraction, args.split_seed, labels)
    sides = {
        name: [shard.path for shard in shards if shard.subject in subjects]
        for name, subjects in (("train", set(split.train)), ("test", set(split.test)))
    }
    logger.info(
        "pretraining on %d streamed shards of %d subjects, %d held-out shards of %d subjects",
        len(sides["train"]),
        len(split.train),
        len(sides["test"]),
        len(split.test),
    )
    # Repeated inside the stream: a resumed run then skips to where the uninterrupted run was.
    train = RepeatedStream(
        sides["train"], buffer_size=args.shuffle_buffer, seed=data_seed(training_args)
    )
    if training_args.train_sampling_strategy == "group_by_length":
        train = SensorGroupedStream(train, step_windows(training_args))
    held_out = None
    if sides["test"]:
        held_out = stream_windows(sides["test"], buffer_size=None)
    return split, train, held_out


def pretrain(
    dataset_dir: str | Path,
    output_dir: str | Path,
    *,
    config: MEGConfig | dict[str, Any] | None = None,
    model_name_or_path: str | Path | None = None,
    max_steps: int = 1000,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    test_fraction: float = 0.2,
    seed: int = 0,
    resume: bool = False,
    streaming: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    **training_options: Any,
) -> Path:
    """Pretrain from Python; see :func:`run_pretraining`.

    Parameters
    ----------
    dataset_dir, output_dir : str | Path
        The dataset folder and the run folder (checkpoints, then ``model/``).
    config : MEGConfig | dict, optional
        The new model's configuration, or a dict of ``MEGConfig`` fields (the others at their
        defaults). Every field is kept except ``sampling_rate`` and ``patch_length``, which
        the dataset's windows set (a warning names any value replaced); without it, the
        ``PretrainingArguments`` defaults.
    model_name_or_path : str | Path, optional
        Continue pretraining this model folder or Hub id instead of a new model (not with
        ``config``).
    max_steps, batch_size, learning_rate : int, int, float
        Optimiser steps, windows per step (per device) and peak learning rate.
    test_fraction, seed : float, int
        Held-out subject fraction and the seed of split, masks and initialisation.
    resume : bool
        Continue from the last complete checkpoint in ``output_dir``.
    streaming : bool
        Stream the training windows from the dataset's Parquet shards
        (:func:`~megfm_hf.training.streaming.stream_windows`) instead of the Arrow dataset.
    callbacks : sequence of transformers.TrainerCallback
        Handed to the ``Trainer``.
    **training_options
        Further ``TrainingArguments`` (e.g. ``save_steps``, ``bf16``).
    """
    model_config = None if config is None else new_model_config(config)
    # Recorded with the exported model, so they name the architecture it was built with.
    architecture = {
        name: getattr(model_config, name) for name in ARCHITECTURE_FIELDS if model_config
    }
    arguments = PretrainingArguments(
        dataset=str(dataset_dir),
        model_name_or_path=str(model_name_or_path) if model_name_or_path else None,
        test_fraction=test_fraction,
        split_seed=seed,
        mask_seed=seed,
        resume=resume,
        streaming=streaming,
        **architecture,
    )
    options = {
        **TRAINING_DEFAULTS,
        "output_dir": str(output_dir),
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "learning_rate": learning_rate,
        "logging_steps": max(1, max_steps // 20),
        "save_steps": max(1, max_steps // 4),
        "seed": seed,
        **training_options,
    }
    return run_pretraining(arguments, TrainingArguments(**options), callbacks, model_config)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> Path:
    """Command-line entry point (``megfm pretrain``, ``scripts/pretrain.py``); ``prog`` names the
    command in its help and errors."""
    return run_from_command_line(
        PretrainingArguments, TRAINING_DEFAULTS, run_pretraining, argv, "pretrained", prog
    )
