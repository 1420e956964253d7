"""Load and check what the evaluation reads: a saved model folder, a dataset folder, subjects.

Every check names the file or argument, the value found and what was expected, so a mismatch
between a model and a dataset fails before any inference runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ..modeling.modeling_megfm import MEGForMaskedSignalModeling

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
SPLIT_FILE = "split.json"
PROCESSOR_FILE = "preprocessor_config.json"
DATASET_REPORT_FILE = "megfm_dataset.json"


@dataclass
class EvaluationData:
    """A dataset folder and its metadata.

    Attributes
    ----------
    dataset : datasets.Dataset
        One row per window (numpy format).
    path : Path
        The dataset folder.
    processor : dict
        ``preprocessor_config.json`` (``sfreq`` in Hz, ``tmin`` and ``window_seconds`` in s,
        ``patch_length`` in samples), or an empty dict when the folder has none.
    report : dict
        ``megfm_dataset.json`` (``label_names``, ``event_id``, ...), or an empty dict.
    subjects, states, events, labels : np.ndarray of str
        The row columns, loaded once.
    """

    dataset: datasets.Dataset
    path: Path
    processor: dict[str, Any]
    report: dict[str, Any]
    subjects: np.ndarray = field(repr=False)
    states: np.ndarray = field(repr=False)
    events: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)

    @property
    def sfreq(self) -> float:
        """Sampling rate of the windows, Hz."""
        return float(self.dataset[0]["sfreq"])

    @property
    def window_samples(self) -> int:
        """Samples per window."""
        return int(np.asarray(self.dataset[0]["input_values"]).shape[-1])

    @property
    def tmin(self) -> float:
        """Start of event-locked windows relative to the event, s (0 when unknown)."""
        return float(self.processor.get("tmin", 0.0) or 0.0)

    @property
    def label_names(self) -> list[str]:
        """Label vocabulary (``megfm_dataset.json``, else the distinct non-empty labels)."""
        names = self.report.get("label_names")
        if names:
            return [str(name) for name in names]
        return sorted({str(label) for label in self.labels if label})


def check_model_folder(model_dir: str | Path) -> Path:
    """Return the folder of a saved model, or raise naming the file it lacks.

    Raises
    ------
    FileNotFoundError
        When the folder, its ``config.json`` or its weights are missing.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {str(folder)!r} does not exist")
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"model folder {str(folder)!r} has no {CONFIG_FILE}; expected a save_pretrained folder"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"model folder {str(folder)!r} has no weights: expected {WEIGHT_FILES[0]} "
            f"(or {WEIGHT_FILES[1]} for sharded weights)"
        )
    return folder


def load_model(
    model_dir: str | Path, device: str | torch.device = "cpu", pooling: str | None = None
) -> MEGForMaskedSignalModeling:
    """Load a saved masked-signal model for evaluation.

    Parameters
    ----------
    model_dir : str | Path
        A ``save_pretrained`` folder with ``config.json`` and ``model.safetensors``.
    device : str | torch.device
        Where to run the model.
    pooling : str, optional
        Override of the saved ``config.pooling`` (how a window's features are summarised).

    Returns
    -------
    model : MEGForMaskedSignalModeling
        In evaluation mode. Checkpoints of a classification head load too; their missing
        decoder is reported and reconstruction is then skipped by the caller
        (``model.decoder_loaded`` is False).

    Raises
    ------
    FileNotFoundError
        When the folder, its ``config.json`` or its weights are missing.
    """
    folder = check_model_folder(model_dir)
    overrides = {} if pooling is None else {"pooling": pooling}
    model, info = MEGForMaskedSignalModeling.from_pretrained(
        folder, output_loading_info=True, **overrides
    )
    missing = [key for key in info.get("missing_keys", []) if key.startswith("decoder.")]
    model.decoder_loaded = not missing
    if missing:
        logger.warning(
            "%s has no reconstruction decoder (%d weights missing); reconstruction is skipped",
            folder,
            len(missing),
        )
    return model.to(device).eval()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None


def load_evaluation_data(dataset_dir: str | Path) -> EvaluationData:
    """Open a dataset folder written by :func:`megfm_hf.data.build_dataset`.

    Parameters
    ----------
    dataset_dir : str | Path
        Folder for ``datasets.load_from_disk``.

    Returns
    -------
    data : EvaluationData

    Raises
    ------
    FileNotFoundError
        When the folder does not exist or is not a ``load_from_disk`` folder.
    ValueError
        When it has no rows or misses a needed column.
    """
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {str(folder)!r} does not exist")
    try:
        dataset = datasets.load_from_disk(str(folder))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"dataset folder {str(folder)!r} is not a datasets.load_from_disk folder ({err})"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.concatenate_datasets(list(dataset.values()))
    needed = {"input_values", "sensor_positions", "sensor_types", "sfreq", "subject", "state"}
    missing = sorted(needed - set(dataset.column_names))
    if missing:
        raise ValueError(
            f"dataset {str(folder)!r} lacks the columns {missing}; expected rows written by "
            "megfm build-dataset"
        )
    if len(dataset) == 0:
        raise ValueError(f"dataset {str(folder)!r} has no rows")

    def column(name: str) -> np.ndarray:
        if name not in dataset.column_names:
            return np.full(len(dataset), "", dtype=object)
        return np.asarray([str(v) if v is not None else "" for v in dataset[name]], dtype=object)

    return EvaluationData(
        dataset=dataset.with_format("numpy"),
        path=folder,
        processor=_read_json(folder / PROCESSOR_FILE),
        report=_read_json(folder / DATASET_REPORT_FILE),
        subjects=column("subject"),
        states=column("state"),
        events=column("event"),
        labels=column("label"),
    )


def check_compatibility(
    model: MEGForMaskedSignalModeling, data: EvaluationData, model_dir: str | Path
) -> None:
    """Refuse a dataset whose sampling rate or window length the model cannot take.

    Raises
    ------
    ValueError
        Naming the dataset's ``sfreq`` and the model's ``sampling_rate`` (Hz), or the window
        length and ``patch_length`` (samples), and the files they come from.
    """
    config = model.config
    sfreqs = np.unique(np.asarray(data.dataset["sfreq"], dtype=float))
    if sfreqs.size != 1 or not np.isclose(sfreqs[0], config.sampling_rate):
        raise ValueError(
            f"dataset {str(data.path)!r} has sfreq={', '.join(f'{s:g}' for s in sfreqs)} Hz but "
            f"the model {str(model_dir)!r} expects sampling_rate={config.sampling_rate:g} Hz "
            f"({CONFIG_FILE}); rebuild the dataset with the model's {PROCESSOR_FILE}"
        )
    samples = data.window_samples
    if samples % config.patch_length:
        raise ValueError(
            f"dataset {str(data.path)!r} has windows of {samples} samples, not a multiple of "
            f"the model's patch_length={config.patch_length} samples ({CONFIG_FILE} of "
            f"{str(model_dir)!r}); rebuild the dataset with the model's {PROCESSOR_FILE}"
        )
    patch = data.processor.get("patch_length")
    if patch is not None and int(patch) != config.patch_length:
        raise ValueError(
            f"dataset {str(data.path)!r} was built with patch_length={patch} "
            f"({PROCESSOR_FILE}) but the model {str(model_dir)!r} has "
            f"patch_length={config.patch_length} ({CONFIG_FILE})"
        )


def select_subjects(
    data: EvaluationData, model_dir: str | Path, subjects: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Choose the held-out subjects and the training subjects.

    Parameters
    ----------
    data : EvaluationData
    model_dir : str | Path
        Its ``split.json`` (``{"train": [...], "test": [...]}``) gives the held-out subjects
        when ``subjects`` is None.
    subjects : sequence of str, optional
        Held-out subjects chosen explicitly.

    Returns
    -------
    test, train : list of str
        Held-out subjects (evaluated) and the other subjects of the dataset (used only to fit
        the ridge baseline). With neither ``subjects`` nor ``split.json``, every subject is
        evaluated and ``train`` is empty.

    Raises
    ------
    ValueError
        When a requested subject is not in the dataset.
    """
    present = sorted(set(data.subjects))
    source = "--subjects"
    if subjects is None:
        split = _read_json(Path(model_dir) / SPLIT_FILE)
        if split.get("test"):
            subjects, source = [str(s) for s in split["test"]], f"{SPLIT_FILE} of {model_dir}"
        else:
            logger.warning(
                "no --subjects and no %s in %s: evaluating all %d subjects, which the model may "
                "have been trained on",
                SPLIT_FILE,
                model_dir,
                len(present),
            )
            return present, []
    wanted = [str(s).removeprefix("sub-") if str(s) not in present else str(s) for s in subjects]
    unknown = [s for s in wanted if s not in present]
    if unknown:
        raise ValueError(
            f"subjects {unknown} (from {source}) are not in dataset {str(data.path)!r}; "
            f"its subjects are {present}"
        )
    test = sorted(set(wanted))
    return test, [s for s in present if s not in test]


def pretraining_subjects(model_dir: str | Path) -> list[str] | None:
    """The subjects a model was pretrained on: ``split.json``'s ``train``, or None if unknown.

    Parameters
    ----------
    model_dir : str | Path
        ``save_pretrained`` folder of ``megfm pretrain``, which writes ``split.json``.

    Returns
    -------
    subjects : list of str or None
        None when the folder has no ``split.json`` with a ``train`` list.
    """
    split = _read_json(Path(model_dir) / SPLIT_FILE)
    if "train" not in split:
        return None
    return sorted(str(s) for s in split["train"])


__all__ = [
    "EvaluationData",
    "check_compatibility",
    "check_model_folder",
    "load_evaluation_data",
    "load_model",
    "pretraining_subjects",
    "select_subjects",
]
