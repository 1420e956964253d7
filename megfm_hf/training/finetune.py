"""Fine-tuning a patient-vs-control (or any) classifier, honestly: by subject.

Subjects are split into train and test sides, stratified by label; no subject has windows on
both sides. Classes are weighted inversely to their frequency among training windows. Window
predictions on the test subjects are averaged into one prediction per subject, and the
reported metrics are over subjects. Three strategies: full fine-tuning, linear probing (frozen
encoder) and LoRA adapters (peft) merged into the exported model.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments

from ..modeling.modeling_megfm import MEGForSequenceClassification
from .checkpoints import write_json_atomic
from .collator import MEGDataCollator
from .data import (
    TrainingDataError,
    check_dataset_matches_model,
    encode_labels,
    load_windows,
    select_subjects,
    split_subjects,
    subject_labels,
)
from .export import export_model, load_dataset_processor
from .metrics import aggregate_by_subject, softmax, subject_metrics
from .trainer import (
    LOADER_DEFAULTS,
    ClassWeightedTrainer,
    build_trainer,
    check_distributed_launch,
    run_from_command_line,
    seed_run,
    train_with_resume,
)

logger = logging.getLogger(__name__)

STRATEGIES = ("full", "linear_probe", "lora")

TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "megfm-finetuning",
    "num_train_epochs": 5,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "learning_rate": 3e-4,
    "weight_decay": 0.01,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "logging_steps": 20,
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "eval_strategy": "no",
    "report_to": [],
    **LOADER_DEFAULTS,
}


@dataclass
class FinetuningArguments:
    """What to fine-tune, on which labels, and how (optimiser settings are ``TrainingArguments``)."""

    dataset: str = field(
        metadata={"help": "labelled dataset folder built by `megfm build-dataset`"}
    )
    model_name_or_path: str = field(metadata={"help": "pretrained model folder or Hub id"})
    label_column: str = field(
        default="label", metadata={"help": "column holding each window's class"}
    )
    positive_label: str | None = field(
        default=None,
        metadata={"help": "the patient class (sensitivity is its recall); default: the last class"},
    )
    num_labels: int | None = field(
        default=None, metadata={"help": "expected number of classes; checked against the data"}
    )
    strategy: str = field(
        default="full", metadata={"help": "full, linear_probe or lora", "choices": STRATEGIES}
    )
    test_fraction: float = field(
        default=0.25, metadata={"help": "fraction of subjects held out for testing"}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the subject split"})
    class_weighting: bool = field(
        default=True, metadata={"help": "weigh classes inversely to frequency"}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling"})
    resume: bool = field(
        default=False, metadata={"help": "resume from the last complete checkpoint"}
    )

    def __post_init__(self) -> None:
        check_strategy(self.strategy)


def check_strategy(strategy: str) -> None:
    """Refuse a fine-tuning strategy that is not one of :data:`STRATEGIES`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}.")


def apply_strategy(
    model: MEGForSequenceClassification,
    strategy: str,
    lora_rank: int = 8,
    lora_alpha: int = 16,
) -> torch.nn.Module:
    """Prepare ``model`` for a fine-tuning ``strategy`` (one of :data:`STRATEGIES`).

    ``full`` trains every weight and returns the model itself; ``linear_probe`` freezes the
    encoder (in place); ``lora`` wraps the model with peft LoRA adapters of rank ``lora_rank``
    on every attention projection (one adapter for each fused projection: a self-attention's
    queries, keys and values, a cross-attention's keys and values), and trains them and the
    classifier.
    """
    check_strategy(strategy)
    if strategy == "linear_probe":
        for parameter in model.megfm.parameters():
            parameter.requires_grad_(False)
        return model
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            target_modules=["qkv_proj", "q_proj", "kv_proj", "o_proj"],
            modules_to_save=["classifier"],
        )
        wrapped = get_peft_model(model, config)
        # Under reentrant activation checkpointing (which the Trainer enables after this) a
        # block passes gradients to the adapters inside it only if its inputs need gradients;
        # the frozen patch projection's output would not, and no adapter would learn.
        model.enable_input_require_grads()
        return wrapped
    return model


def class_weights(labels: np.ndarray, num_labels: int) -> torch.Tensor:
    """Weights inversely proportional to class frequency, averaging 1 over windows."""
    counts = np.bincount(labels, minlength=num_labels).astype(float)
    weights = np.where(counts > 0, len(labels) / (num_labels * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def predict_windows(trainer, dataset) -> np.ndarray:
    """Class probabilities of every window of ``dataset``."""
    logits = trainer.predict(dataset).predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return softmax(np.asarray(logits, dtype=float))


def run_finetuning(
    args: FinetuningArguments,
    training_args: TrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> Path:
    """Fine-tune, evaluate per subject on held-out subjects and export the classifier.

    Writes ``{output_dir}/model`` (the classifier with ``id2label``, processor and
    ``split.json``), ``{output_dir}/subject_predictions.tsv`` (one row per test subject:
    label, predicted class, class probabilities, window count) and
    ``{output_dir}/subject_metrics.json``. Returns the model folder.
    """
    dataset = load_windows(args.dataset)
    processor = load_dataset_processor(args.dataset)
    dataset, label_names = encode_labels(dataset, args.label_column)
    if args.num_labels is not None and args.num_labels != len(label_names):
        raise TrainingDataError(
            f"num_labels={args.num_labels} but the dataset's {args.label_column!r} column holds "
            f"{len(label_names)} classes {label_names}."
        )
    positive = args.positive_label if args.positive_label is not None else label_names[-1]
    if positive not in label_names:
        raise TrainingDataError(
            f"positive_label={positive!r} is not among the classes {label_names}."
        )

    seed_run(training_args)
    model = MEGForSequenceClassification.from_pretrained(
        args.model_name_or_path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    processor.check_model_config(model.config)
    check_dataset_matches_model(dataset, model.config, name=args.dataset)
    check_distributed_launch(training_args)

    labels = subject_labels(dataset, args.label_column)
    split = split_subjects(list(labels), args.test_fraction, args.split_seed, labels)
    train = select_subjects(dataset, split.train).with_format("numpy")
    test = select_subjects(dataset, split.test).with_format("numpy")
    logger.info(
        "fine-tuning on %d subjects, testing on %d: %s",
        len(split.train),
        len(split.test),
        split.to_json(),
    )
    if len(set(np.asarray(train["labels"]).tolist())) < 2:
        raise TrainingDataError(
            "the training subjects hold a single class; add subjects of every class."
        )

    weights = (
        class_weights(np.asarray(train["labels"]), len(label_names))
        if args.class_weighting
        else None
    )
    trainable = apply_strategy(model, args.strategy, args.lora_rank, args.lora_alpha)
    trainer = build_trainer(
        trainable,
        training_args,
        train,
        None,
        MEGDataCollator(model.config),
        trainer_class=ClassWeightedTrainer,
        callbacks=callbacks,
        class_weights=weights,
    )
    train_with_resume(trainer, resume=args.resume)

    probabilities = predict_windows(trainer, test)
    predictions = aggregate_by_subject(test["subject"], probabilities, np.asarray(test["labels"]))
    metrics = subject_metrics(predictions, positive_label=label_names.index(positive))
    metrics["positive_label"] = positive
    output_dir = Path(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        _write_predictions(output_dir / "subject_predictions.tsv", predictions, label_names)
        write_json_atomic(output_dir / "subject_metrics.json", metrics)
    logger.info("subject-level test metrics: %s", json.dumps(metrics))

    final = trainable.merge_and_unload() if args.strategy == "lora" else model
    return export_model(
        trainer,
        processor,
        split=split,
        metrics={f"test_{k}": v for k, v in metrics.items()},
        arguments={"finetuning": {k: v for k, v in asdict(args).items() if k != "dataset"}},
        model=final,
    )


def _write_predictions(path: Path, predictions, label_names: Sequence[str]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(
            ["subject", "label", "predicted", *[f"p_{name}" for name in label_names], "n_windows"]
        )
        for subject, label, probability, count in zip(
            predictions.subjects,
            predictions.labels,
            predictions.probabilities,
            predictions.n_windows,
            strict=True,
        ):
            writer.writerow(
                [
                    subject,
                    label_names[label],
                    label_names[int(probability.argmax())],
                    *np.round(probability, 4),
                    count,
                ]
            )
    temporary.replace(path)


def finetune(
    dataset_dir: str | Path,
    model_dir: str | Path,
    output_dir: str | Path,
    *,
    strategy: str = "full",
    epochs: float = 5,
    batch_size: int = 16,
    learning_rate: float = 3e-4,
    test_fraction: float = 0.25,
    seed: int = 0,
    callbacks: Sequence[TrainerCallback] = (),
    **training_options: Any,
) -> Path:
    """Fine-tune from Python; see :func:`run_finetuning` (``callbacks`` go to the ``Trainer``)."""
    arguments = FinetuningArguments(
        dataset=str(dataset_dir),
        model_name_or_path=str(model_dir),
        strategy=strategy,
        test_fraction=test_fraction,
        split_seed=seed,
    )
    options = {
        **TRAINING_DEFAULTS,
        "output_dir": str(output_dir),
        "num_train_epochs": epochs,
        "per_device_train_batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        **training_options,
    }
    return run_finetuning(arguments, TrainingArguments(**options), callbacks)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> Path:
    """Command-line entry point (``megfm finetune``, ``scripts/finetune.py``); ``prog`` names the
    command in its help and errors."""
    return run_from_command_line(
        FinetuningArguments, TRAINING_DEFAULTS, run_finetuning, argv, "fine-tuned", prog
    )
