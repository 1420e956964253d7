"""Building and running the ``Trainer`` the same way for pretraining and fine-tuning."""

from __future__ import annotations

import logging
import math
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
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    TrainOutput,
    has_length,
    rotate_checkpoints,
)

from .checkpoints import (
    CheckpointError,
    discard_incomplete_checkpoints,
    discarded_checkpoints,
    last_complete_checkpoint,
    mark_checkpoint_complete,
)
from .collator import WINDOW_INDEX
from .rows import WindowRows
from .sampling import SensorGroupedSampler, data_seed, step_windows

logger = logging.getLogger(__name__)


def loader_defaults(cuda: bool) -> dict[str, Any]:
    """How pretraining and fine-tuning feed the model, unless told otherwise.

    Batches of one sensor count (no padding where a dataset mixes MEG systems). On a GPU
    (``cuda``), also worker processes that read and batch windows while the GPU trains, and
    that live from one epoch (and evaluation) to the next instead of starting again, empty, at
    each; batches in pinned memory, copied to the GPU without waiting for it
    (``accelerator_config={"non_blocking": True}``): the host goes on launching the step's
    kernels while the batch crosses, instead of waiting for the previous step to finish.

    Any of these can be overridden (an ``accelerator_config`` of one's own replaces this one).
    """
    workers = min(4, (os.cpu_count() or 1) - 1) if cuda else 0
    defaults: dict[str, Any] = {
        "train_sampling_strategy": "group_by_length",
        "dataloader_num_workers": workers,
        "dataloader_pin_memory": cuda,
        "dataloader_persistent_workers": workers > 0,
    }
    if cuda:
        defaults["accelerator_config"] = {"non_blocking": True}
    return defaults


#: :func:`loader_defaults` on this machine.
LOADER_DEFAULTS: dict[str, Any] = loader_defaults(torch.cuda.is_available())


class SamplerEpochCallback(TrainerCallback):
    """Hands the number of each epoch the ``Trainer`` begins to a :class:`SensorGroupedSampler`.

    accelerate forwards the ``Trainer``'s ``set_epoch`` to the sampler, except in a run of
    several processes resumed in the middle of an epoch: there the sampler sits below the batch
    sampler that skips the batches already trained on, out of its reach. The epoch is read
    from the ``Trainer``'s state: whole epochs done, plus the fraction of the current one.
    """

    def __init__(self) -> None:
        self.sampler: SensorGroupedSampler | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.sampler is not None:
            self.sampler.set_epoch(math.floor(state.epoch or 0))


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

    ``dataloader_persistent_workers`` (on by default where there are loader workers) is
    turned off when ``dataloader_num_workers`` is 0: there is no worker to keep.

    Every checkpoint is synced to disk and marked complete before the ``Trainer`` deletes
    older ones (``save_total_limit``), so that a run killed at any moment leaves a complete
    checkpoint to resume from (see :mod:`~megfm_hf.training.checkpoints`).
    """

    def __init__(self, *args, **kwargs):
        for name in ("train_dataset", "eval_dataset"):
            if name in kwargs:
                kwargs[name] = window_rows(kwargs[name])
        super().__init__(*args, **kwargs)
        if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers == 0:
            # The loader defaults keep workers alive; without workers there is nothing to keep
            # (and torch's DataLoader refuses the pair).
            self.args.dataloader_persistent_workers = False
        self.sampler_epoch = SamplerEpochCallback()
        self.add_callback(self.sampler_epoch)

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
            sampler = SensorGroupedSampler(
                dataset.sensor_counts(), step_windows(self.args), data_seed(self.args)
            )
            self.sampler_epoch.sampler = sampler
            return sampler
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset: datasets.Dataset) -> Sampler | None:
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        # Several processes: accelerate shards the dataset in order itself.
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        # The Trainer deletes old checkpoints at the end of its save, before any callback
        # runs: hold the deletion back until the new checkpoint is marked complete.
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        run_dir = self._get_output_dir(trial=trial)
        # Every process writes part of a checkpoint (its own RNG state at least).
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            mark_checkpoint_complete(folder, self.state.global_step)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )


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
    trainer_class: type[MEGTrainer] = MEGTrainer,
    callbacks: Sequence[TrainerCallback] = (),
    **kwargs,
) -> MEGTrainer:
    """A :class:`MEGTrainer` (crash-safe checkpoints) with ``callbacks``; an empty evaluation
    dataset counts as none."""
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=None if eval_dataset is None or _is_empty(eval_dataset) else eval_dataset,
        data_collator=data_collator,
        callbacks=list(callbacks),
        **kwargs,
    )


def _is_empty(dataset: Any) -> bool:
    return has_length(dataset) and len(dataset) == 0


def train_with_resume(trainer: Trainer, resume: bool) -> TrainOutput:
    """Train, resuming from the last complete checkpoint when ``resume`` is set.

    Checkpoints that a killed run left half-written are moved aside first (by the main
    process), so they are never trusted. An output folder without any checkpoint starts from
    the first step (with a warning).

    Raises
    ------
    CheckpointError
        When ``resume`` is set and the output folder holds checkpoints but none of them is
        complete: starting from the first step would silently discard the run's progress.
    """
    checkpoint = None
    if resume:
        output_dir = trainer.args.output_dir
        if trainer.accelerator.is_main_process:
            discard_incomplete_checkpoints(output_dir)
        trainer.accelerator.wait_for_everyone()
        checkpoint = last_complete_checkpoint(output_dir)
        discarded = discarded_checkpoints(output_dir)
        if checkpoint is None and discarded:
            raise CheckpointError(
                f"cannot resume: {output_dir} holds {len(discarded)} checkpoint(s) but none was "
                f"written completely ({', '.join(path.name for path in discarded)}, moved aside "
                "under these names). Run without --resume (resume=False) to train from the "
                "first step, or delete those folders."
            )
        if checkpoint is None:
            logger.warning("no checkpoint in %s; starting from the first step", output_dir)
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
