"""Building and running the ``Trainer`` the same way for pretraining and fine-tuning."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import Sampler, SequentialSampler
from transformers import (
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    enable_full_determinism,
    set_seed,
)
from transformers.trainer_utils import TrainOutput, has_length

from .checkpoints import (
    CheckpointCompletionCallback,
    discard_incomplete_checkpoints,
    last_complete_checkpoint,
)
from .collator import WINDOW_INDEX
from .rows import WindowRows
from .sampling import SensorGroupedSampler, step_windows

logger = logging.getLogger(__name__)


#: How pretraining and fine-tuning feed the model, unless told otherwise: batches of one sensor
#: count (no padding where a dataset mixes MEG systems), and on a GPU worker processes that
#: read and batch windows while the GPU trains, into pinned memory.
LOADER_DEFAULTS: dict[str, Any] = {
    "train_sampling_strategy": "group_by_length",
    "dataloader_num_workers": min(4, (os.cpu_count() or 1) - 1) if torch.cuda.is_available() else 0,
    "dataloader_pin_memory": torch.cuda.is_available(),
}


def window_rows(dataset: Any) -> Any:
    """A window dataset as :class:`WindowRows` (batch-at-a-time reading); anything else as is."""
    if isinstance(dataset, datasets.Dataset) and "input_values" in dataset.column_names:
        return WindowRows(dataset)
    return dataset


class MEGTrainer(Trainer):
    """A ``Trainer`` that reads windows a batch at a time and batches one sensor array together.

    Window datasets (train, evaluation, prediction) are read through :class:`WindowRows`,
    which decodes a whole batch of rows at once instead of window by window.

    With ``train_sampling_strategy="group_by_length"`` (the megfm default), the "length" of a
    window is its number of sensors, read from the dataset's ``sensor_types`` column without
    decoding any signal, and every optimiser step (all processes, all accumulation steps) gets
    windows of one sensor count (:class:`~megfm_hf.training.sampling.SensorGroupedSampler`).
    A dataset that mixes MEG systems then trains without padding. transformers' own grouping
    sorts by length within random chunks, which leaves mixed batches at every chunk border,
    and needs a length column that it drops with the unused columns.

    Evaluation and prediction always keep the dataset's order: predictions are matched to
    windows (and so to subjects) by position.

    Each row keeps its ``window_index`` through the ``Trainer``'s removal of columns the model
    does not take, so that the collator can seed the batch's mask from it (see
    :class:`~megfm_hf.training.MEGDataCollator`).
    """

    def __init__(self, *args, **kwargs):
        for name in ("train_dataset", "eval_dataset"):
            if name in kwargs:
                kwargs[name] = window_rows(kwargs[name])
        super().__init__(*args, **kwargs)

    def evaluate(self, eval_dataset: Any = None, *args, **kwargs) -> dict[str, float]:
        return super().evaluate(window_rows(eval_dataset), *args, **kwargs)

    def predict(self, test_dataset: Any, *args, **kwargs):
        return super().predict(window_rows(test_dataset), *args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if WINDOW_INDEX not in self._signature_columns:
            self._signature_columns.append(WINDOW_INDEX)

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler | None:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not has_length(dataset):
            return None  # streamed windows come in their stream's (shuffled) order
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(
            dataset, WindowRows
        ):
            return SensorGroupedSampler(dataset.sensor_counts(), step_windows(self.args))
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset: datasets.Dataset) -> Sampler | None:
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        # Several processes: accelerate shards the dataset in order itself.
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


class ClassWeightedTrainer(MEGTrainer):
    """A ``Trainer`` whose classification loss weighs classes (e.g. inversely to frequency).

    Clinical cohorts are imbalanced (the reference cohort had 362 patients and 54 controls);
    without weights a classifier can score well by always naming the majority class.
    """

    def __init__(self, *args, class_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weights = self.class_weights.to(device=outputs.logits.device, dtype=torch.float32)
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weights)
        return (loss, outputs) if return_outputs else loss


def seed_run(args: TrainingArguments) -> None:
    """Seed Python, NumPy and torch with ``args.seed`` before the model is built.

    The ``Trainer`` seeds itself, but only once the model exists; a new model's weights (or a
    new classification head) drawn before then would differ from run to run, and so would
    every step after. Call it before creating the model, as transformers' examples do.
    """
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def check_distributed_launch(args: TrainingArguments) -> None:
    """Refuse a multi-process launch that the ``Trainer`` would run as independent copies.

    Without a GPU, ``torchrun``/``accelerate launch`` processes only form one distributed run
    with ``use_cpu=True``; otherwise each would train the whole model alone and all would
    write the same output folder.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size == 1:
        raise RuntimeError(
            f"launched as {launched} processes, but the Trainer runs each one on its own: without "
            "a GPU, distributed training needs --use_cpu true (TrainingArguments(use_cpu=True))."
        )


def build_trainer(
    model: PreTrainedModel,
    args: TrainingArguments,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    data_collator: Callable,
    trainer_class: type[Trainer] = MEGTrainer,
    callbacks: Sequence[TrainerCallback] = (),
    **kwargs,
) -> Trainer:
    """A ``Trainer`` with crash-safe checkpoint marking, then ``callbacks``."""
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=None if eval_dataset is None or _is_empty(eval_dataset) else eval_dataset,
        data_collator=data_collator,
        callbacks=[CheckpointCompletionCallback(), *callbacks],
        **kwargs,
    )


def _is_empty(dataset: Any) -> bool:
    return has_length(dataset) and len(dataset) == 0


def train_with_resume(trainer: Trainer, resume: bool) -> TrainOutput:
    """Train, resuming from the last complete checkpoint when ``resume`` is set.

    Checkpoints that a killed run left half-written are moved aside first (by the main
    process), so they are never trusted.
    """
    checkpoint = None
    if resume:
        if trainer.accelerator.is_main_process:
            discard_incomplete_checkpoints(trainer.args.output_dir)
        trainer.accelerator.wait_for_everyone()
        checkpoint = last_complete_checkpoint(trainer.args.output_dir)
        if checkpoint is None:
            logger.warning(
                "no complete checkpoint in %s; starting from the beginning", trainer.args.output_dir
            )
        else:
            logger.info("resuming from %s", checkpoint)
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def run_from_command_line(
    arguments_class: type,
    defaults: dict[str, Any],
    run: Callable[[Any, TrainingArguments], Path],
    argv: Sequence[str] | None,
    done: str,
    prog: str | None = None,
) -> Path:
    """Parse a run's dataclass and ``TrainingArguments`` (with run-specific defaults), run it.

    The shared body of ``megfm pretrain`` / ``megfm finetune`` and their scripts; ``prog`` is
    the command's name in usage and error messages (the script's name by default).
    """
    parser = HfArgumentParser((arguments_class, TrainingArguments), prog=prog)
    parser.set_defaults(**defaults)
    arguments, training_arguments = parser.parse_args_into_dataclasses(args=argv)
    model_dir = run(arguments, training_arguments)
    if training_arguments.process_index == 0:
        print(f"{done} model written to {model_dir}")
    return model_dir
