"""Exporting a trained model as a clean, publishable folder.

The folder holds only what ``from_pretrained`` and the Hub need, with no pickle files:
safetensors weights, ``config.json``, the remote code, ``preprocessor_config.json``, plus
``split.json`` (which subjects were held out) and the training settings as JSON. It is written
to a temporary folder and renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import Trainer

from ..data.processor import MEGProcessor
from .checkpoints import write_json_atomic
from .data import PROCESSOR_CONFIG, SubjectSplit, TrainingDataError

MODEL_SUBDIR = "model"


def load_dataset_processor(dataset_dir: str | Path) -> MEGProcessor:
    """The processor a dataset was built with (its ``preprocessor_config.json``)."""
    path = Path(dataset_dir) / PROCESSOR_CONFIG
    if not path.is_file():
        raise TrainingDataError(
            f"{dataset_dir} has no {PROCESSOR_CONFIG}; build datasets with `megfm build-dataset` "
            "so training knows their sampling rate, patch length and scaling."
        )
    return MEGProcessor.from_pretrained(str(dataset_dir))


def replace_folder(temporary: Path, target: Path) -> None:
    """Move ``temporary`` to ``target``, replacing an existing folder with one rename each."""
    if target.exists():
        previous = target.with_name(f".{target.name}.previous-{int(time.time())}")
        target.rename(previous)
        temporary.rename(target)
        shutil.rmtree(previous)
    else:
        temporary.rename(target)


def export_model(
    trainer: Trainer,
    processor: MEGProcessor,
    *,
    split: SubjectSplit | None = None,
    metrics: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    model=None,
) -> Path:
    """Write ``{output_dir}/model`` from the main process and return its path.

    Parameters
    ----------
    trainer : Trainer
        The trainer after training.
    processor : MEGProcessor
        The preprocessing the model was trained with.
    split : SubjectSplit, optional
        Subjects used for training and held out.
    metrics : dict, optional
        Final evaluation metrics.
    arguments : dict, optional
        The run's own arguments (next to the ``TrainingArguments``).
    model : PreTrainedModel, optional
        The model to save instead of ``trainer.model`` (e.g. LoRA weights merged into it).
    """
    target = Path(trainer.args.output_dir) / MODEL_SUBDIR
    if trainer.accelerator.is_main_process:
        temporary = target.with_name(f".{MODEL_SUBDIR}.tmp-{int(time.time() * 1e3)}")
        temporary.mkdir(parents=True)
        model = model if model is not None else trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(temporary)
        processor.save_pretrained(str(temporary))
        if split is not None:
            write_json_atomic(temporary / "split.json", split.to_json())
        settings = json.loads(trainer.args.to_json_string())
        settings.pop("output_dir", None)
        write_json_atomic(
            temporary / "training_args.json", {**(arguments or {}), "training": settings}
        )
        trainer.state.save_to_json(str(temporary / "trainer_state.json"))
        if metrics:
            write_json_atomic(temporary / "training_metrics.json", metrics)
        replace_folder(temporary, target)
    trainer.accelerator.wait_for_everyone()
    return target
