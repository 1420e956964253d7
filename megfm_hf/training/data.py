"""Training data: load window datasets, split them by subject, encode labels, check them.

A subject's windows are strongly correlated, so every split here is by subject: no subject
ever has windows on both sides of a split, and diagnoses are judged per subject.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq

from ..modeling.configuration_megfm import MEGConfig

logger = logging.getLogger(__name__)

DATASET_SUMMARY = "megfm_dataset.json"
PROCESSOR_CONFIG = "preprocessor_config.json"


class TrainingDataError(ValueError):
    """A dataset that cannot be used for the requested training, with the reason."""


def load_windows(path: str | Path) -> datasets.Dataset:
    """Load a window dataset built by :func:`megfm_hf.data.build_dataset`.

    Parameters
    ----------
    path : str | Path
        The dataset folder (``datasets.load_from_disk`` layout) or a folder of Parquet shards.

    Returns
    -------
    datasets.Dataset
        The windows, with NumPy formatting for the model columns.
    """
    path = Path(path)
    if not path.exists():
        raise TrainingDataError(f"dataset folder {path} does not exist.")
    empty = TrainingDataError(f"dataset {path} has no windows.")
    # datasets fails with unrelated errors on a folder without rows, so look before loading.
    if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
        state = path / "state.json"
        if state.is_file() and not json.loads(state.read_text()).get("_data_files"):
            raise empty
        dataset = datasets.load_from_disk(str(path))
    else:
        shards = shard_files(path)
        if not sum(pq.read_metadata(shard).num_rows for shard in shards):
            raise empty
        dataset = datasets.load_dataset(
            "parquet", data_files=[str(s) for s in shards], split="train"
        )
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset["train"]
    if len(dataset) == 0:
        raise empty
    return dataset


#: Where a dataset folder keeps its Parquet shards: as built, as pushed to the Hub, or loose.
SHARD_PATTERNS = ("parquet/*.parquet", "data/*.parquet", "*.parquet")


def shard_files(path: str | Path) -> list[Path]:
    """The Parquet window shards of a dataset folder, in file-name order.

    Looks in ``parquet/`` (as ``megfm build-dataset`` writes them), ``data/`` (as pushed to the
    Hub) and the folder itself, and raises when none holds a shard.
    """
    path = Path(path)
    for pattern in SHARD_PATTERNS:
        shards = sorted(path.glob(pattern))
        if shards:
            return shards
    raise TrainingDataError(
        f"{path} holds no Parquet shards ({', '.join(SHARD_PATTERNS)}) and is not a datasets "
        "folder (dataset_info.json); build one with `megfm build-dataset`."
    )


def dataset_summary(path: str | Path) -> dict:
    """The builder's summary (``megfm_dataset.json``) of a dataset folder, or ``{}``."""
    summary = Path(path) / DATASET_SUMMARY
    return json.loads(summary.read_text()) if summary.is_file() else {}


def check_dataset_matches_model(
    dataset: datasets.Dataset, config: MEGConfig, name: str = "dataset"
) -> None:
    """Raise when the windows' sampling rate or length disagree with the model.

    Parameters
    ----------
    dataset : datasets.Dataset
        Windows with ``sfreq`` and ``input_values`` columns.
    config : MEGConfig
        The model configuration.
    name : str
        How to name the dataset in the error.
    """
    if len(dataset) == 0:
        raise TrainingDataError(f"{name} is empty: no windows to train on.")
    num_samples = np.asarray(dataset[0]["input_values"]).shape[-1]
    check_windows_match_model(dataset["sfreq"], num_samples, config, name)


def check_windows_match_model(
    sfreqs: Sequence[float], num_samples: int, config: MEGConfig, name: str = "dataset"
) -> None:
    """Raise unless every window is sampled at the model's rate in whole patches.

    Parameters
    ----------
    sfreqs : sequence of float
        The sampling rate of every window (or of every shard).
    num_samples : int
        Samples per window.
    config : MEGConfig
        The model configuration.
    name : str
        How to name the dataset in the error.
    """
    sfreqs = np.unique(np.asarray(sfreqs, dtype=float))
    if len(sfreqs) != 1 or not np.isclose(sfreqs[0], config.sampling_rate):
        raise TrainingDataError(
            f"{name} windows are sampled at {sfreqs.tolist()} Hz but the model expects "
            f"sampling_rate={config.sampling_rate:g} Hz; rebuild the dataset with "
            f"--sfreq {config.sampling_rate:g} or choose a model with the dataset's rate."
        )
    if num_samples % config.patch_length:
        raise TrainingDataError(
            f"{name} windows have {num_samples} samples, not a multiple of the model's "
            f"patch_length={config.patch_length}; rebuild with --patch-length {config.patch_length}."
        )


@dataclass(frozen=True)
class SubjectSplit:
    """Subjects on each side of a split."""

    train: tuple[str, ...]
    test: tuple[str, ...]

    def to_json(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "test": list(self.test)}


def subject_labels(dataset: datasets.Dataset, label_column: str = "label") -> dict[str, str]:
    """One label per subject; raise when a subject has several or none."""
    subjects = np.asarray(dataset["subject"])
    if label_column in dataset.column_names:
        labels = np.asarray(dataset[label_column], dtype=object)
    else:
        labels = np.full(len(subjects), "", dtype=object)
    result: dict[str, str] = {}
    for subject in np.unique(subjects):
        values = {"" if v is None else str(v) for v in labels[subjects == subject]}
        values.discard("")
        if len(values) > 1:
            raise TrainingDataError(
                f"subject {subject} has windows with different labels {sorted(values)}; a subject "
                "needs a single label for subject-level evaluation."
            )
        result[str(subject)] = values.pop() if values else ""
    return result


def split_subjects(
    subjects: Sequence[str],
    test_fraction: float,
    seed: int = 0,
    labels: dict[str, str] | None = None,
) -> SubjectSplit:
    """Split subjects into train and test, stratified by label when labels are given.

    Parameters
    ----------
    subjects : sequence of str
        Subject identifiers (each listed once or many times).
    test_fraction : float
        Fraction of subjects (of each label) in the test side, in (0, 1).
    seed : int
        Seed of the shuffle.
    labels : dict, optional
        Subject -> label; then every label is split in the same proportion, with at least one
        test subject per label that has two or more subjects.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1).")
    unique = sorted(set(map(str, subjects)))
    if len(unique) < 2:
        raise TrainingDataError(f"need at least 2 subjects to split, got {len(unique)}: {unique}.")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for subject in unique:
        groups.setdefault((labels or {}).get(subject, ""), []).append(subject)
    test: list[str] = []
    for members in groups.values():
        members = [str(member) for member in rng.permutation(members)]
        count = int(round(test_fraction * len(members)))
        count = min(max(count, 1 if len(members) > 1 else 0), len(members) - 1)
        test += members[:count]
    if not test:
        test = [unique[int(rng.integers(len(unique)))]]
    train = [s for s in unique if s not in test]
    return SubjectSplit(train=tuple(sorted(train)), test=tuple(sorted(test)))


def select_subjects(dataset: datasets.Dataset, subjects: Sequence[str]) -> datasets.Dataset:
    """The windows of the given subjects."""
    wanted = set(subjects)
    indices = [i for i, subject in enumerate(dataset["subject"]) if subject in wanted]
    return dataset.select(indices)


def encode_labels(
    dataset: datasets.Dataset,
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> tuple[datasets.Dataset, list[str]]:
    """Add an integer ``labels`` column from a string label column.

    Raises when the column is missing or empty, or holds a single class.

    Returns
    -------
    dataset : datasets.Dataset
        With ``labels`` (int64), the index of each window's label in ``label_names``.
    label_names : list of str
        The classes in index order (sorted unless given).
    """
    if label_column not in dataset.column_names:
        raise TrainingDataError(
            f"dataset has no column {label_column!r}; fine-tuning needs a label per window "
            "(the manifest's `label` column or participants.tsv through --label-column)."
        )
    values = ["" if v is None else str(v) for v in dataset[label_column]]
    unlabelled = sum(v == "" for v in values)
    if unlabelled:
        raise TrainingDataError(
            f"{unlabelled} of {len(values)} windows have no {label_column!r}; label every "
            "subject or drop the unlabelled ones before fine-tuning."
        )
    present = sorted(set(values))
    if label_names is None:
        label_names = present
    unknown = sorted(set(present) - set(label_names))
    if unknown:
        raise TrainingDataError(
            f"labels {unknown} are not among the expected classes {list(label_names)}."
        )
    if len(present) < 2:
        raise TrainingDataError(
            f"all windows carry the label {present[0]!r}; a classifier needs at least two classes."
        )
    index = {name: i for i, name in enumerate(label_names)}
    codes = np.array([index[v] for v in values], dtype=np.int64)
    if "labels" in dataset.column_names:
        dataset = dataset.remove_columns("labels")
    return dataset.add_column("labels", codes), list(label_names)
