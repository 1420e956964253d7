"""Subject codes and local paths in what is published: where they come from, how they are removed.

The evaluation's ``metrics.json`` is written for the machine it ran on: it names the model and
dataset folders by their absolute paths and the evaluated subjects by their codes. What goes to
the Hub is a sanitised copy (:func:`sanitize_metrics`): paths reduced to their final component,
subject codes replaced by ordinal labels (``subject-1``, ``subject-2``, ...), the same code by the
same label throughout. The local file is never changed.

The subject codes themselves are collected by :func:`subject_codes` from ``split.json`` (model
and dataset folders), the ``subject`` column of the dataset's Parquet shards and the metrics, and
handed to the privacy gate (:mod:`megfm_hf.hub.privacy`), which refuses them in every uploaded
file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .privacy import subject_code_pattern

#: the file naming the subjects of each side of a split (written by the training entry points)
SPLIT_FILE = "split.json"
#: top-level keys of ``metrics.json`` that hold a local folder
PATH_KEYS: tuple[str, ...] = ("model", "dataset")
#: label of the ``n``-th subject in the published metrics
ORDINAL_LABEL = "subject-{}"

# keys whose list value holds subject codes ("test_subjects", "test_subjects_in_pretraining",
# "subject_ids"); counts such as "n_subjects" hold numbers and are left alone
_SUBJECT_LIST_KEY = re.compile(r"(?:^|_)(?:subjects|subject_ids)(?:_|$)")
# keys whose mapping value is keyed by subject code ("per_subject", "per_subject_scores")
_SUBJECT_TABLE_KEY = re.compile(r"(?:^|_)per_subject(?:_|$)")
# an absolute path (POSIX, home-relative, Windows drive or UNC) inside a text; a slash after a
# letter, digit, '.', ':' or another slash ("auditory/left", "https://") starts none
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"]+)+[/\\]?")


def _bare(code: object) -> str:
    """A subject code without its BIDS ``sub-`` prefix, in lower case, for comparisons."""
    text = str(code).strip()
    return (text[4:] if text.lower().startswith("sub-") else text).lower()


def _final_component(path: str) -> str:
    """The last component of a local path (``/data/clinic/windows`` -> ``windows``)."""
    return PureWindowsPath(path).name if "\\" in path else PurePath(path.rstrip("/")).name


def _split_codes(path: Path) -> list[str]:
    """Every subject named in a ``split.json`` (``{"train": [...], "test": [...]}``)."""
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(split, Mapping):
        raise ValueError(f"{path}: expected an object of subject lists, got {type(split).__name__}")
    return [
        str(code)
        for side in split.values()
        if isinstance(side, list | tuple)
        for code in side
        if isinstance(code, str | int) and not isinstance(code, bool)
    ]


def dataset_subject_codes(dataset_dir: str | Path) -> list[str]:
    """The subject codes of a built dataset folder.

    Parameters
    ----------
    dataset_dir : str | Path
        A folder of :func:`megfm_hf.data.builder.build_dataset` (``parquet/*.parquet``), with an
        optional ``split.json``.

    Returns
    -------
    codes : list of str
        Distinct values of the shards' ``subject`` column and the subjects of ``split.json``.

    Notes
    -----
    Only the ``subject`` column is read from each shard (Parquet stores columns apart), so the
    cost does not grow with the signals: a few kilobytes per shard.
    """
    dataset_dir = Path(dataset_dir)
    codes: set[str] = set()
    if (dataset_dir / SPLIT_FILE).is_file():
        codes.update(_split_codes(dataset_dir / SPLIT_FILE))
    for shard in sorted((dataset_dir / "parquet").glob("*.parquet")):
        parquet = pq.ParquetFile(shard)
        if "subject" in parquet.schema_arrow.names:
            column = parquet.read(columns=["subject"])["subject"].combine_chunks()
            codes.update(str(v) for v in pc.unique(column).to_pylist() if v)
    return sorted(codes)


def metrics_subject_codes(metrics: Mapping[str, Any]) -> list[str]:
    """The subject codes an evaluation's metrics name.

    Parameters
    ----------
    metrics : Mapping
        Content of ``metrics.json``.

    Returns
    -------
    codes : list of str
        Entries of the lists under keys with a ``subjects`` or ``subject_ids`` part
        (``test_subjects``, ``test_subjects_in_pretraining``) and keys of the tables under
        ``per_subject`` keys, at any depth.
    """
    codes: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if _SUBJECT_LIST_KEY.search(str(key)) and isinstance(item, list | tuple):
                    codes.update(str(c) for c in item if isinstance(c, str | int))
                elif _SUBJECT_TABLE_KEY.search(str(key)) and isinstance(item, Mapping):
                    codes.update(str(c) for c in item)
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(metrics)
    return sorted(code for code in codes if code.strip())


def subject_codes(
    model_dir: str | Path,
    *,
    dataset_dir: str | Path | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> tuple[str, ...]:
    """Collect the subject codes that must not be published with a model.

    Parameters
    ----------
    model_dir : str | Path
        A model folder; its ``split.json`` names the pretraining and held-out subjects.
    dataset_dir : str | Path | None
        The dataset folder (:func:`dataset_subject_codes`); when ``None``, the evaluation's
        dataset folder recorded in ``metrics["dataset"]`` is used if it exists on this machine.
    metrics : Mapping | None
        The evaluation's metrics (:func:`metrics_subject_codes`).

    Returns
    -------
    codes : tuple of str
        Sorted, distinct, non-empty codes.

    Raises
    ------
    ValueError
        If a ``split.json`` is not a JSON object.
    """
    codes: set[str] = set()
    if (Path(model_dir) / SPLIT_FILE).is_file():
        codes.update(_split_codes(Path(model_dir) / SPLIT_FILE))
    metrics = metrics or {}
    codes.update(metrics_subject_codes(metrics))
    recorded = metrics.get("dataset")
    if dataset_dir is None and isinstance(recorded, str) and Path(recorded).is_dir():
        dataset_dir = recorded
    if dataset_dir is not None:
        codes.update(dataset_subject_codes(dataset_dir))
    return tuple(sorted(code.strip() for code in codes if code.strip()))


def sanitize_metrics(
    metrics: Mapping[str, Any], subject_codes: Iterable[str] = ()
) -> dict[str, Any]:
    """A copy of evaluation metrics without local paths or subject codes, to publish.

    Parameters
    ----------
    metrics : Mapping
        Content of ``metrics.json``; not modified.
    subject_codes : iterable of str
        Codes to replace besides those the metrics name themselves
        (:func:`metrics_subject_codes`), for example from :func:`subject_codes`.

    Returns
    -------
    sanitized : dict
        The same structure, in which

        - the top-level folders (:data:`PATH_KEYS`) and every absolute path inside a text are
          reduced to their final component;
        - every subject code, as a whole value, a key (per-subject tables) or a word inside a
          text, in any case and with or without ``sub-``, is replaced by an ordinal label
          (:data:`ORDINAL_LABEL`), numbered in order of first appearance, the same code by the
          same label throughout.

    Notes
    -----
    Inside texts, a code of digits alone is replaced only in its ``sub-`` spelling, as the privacy
    gate refuses it (:func:`~megfm_hf.hub.privacy.subject_code_forms`); as a whole value it is
    always replaced.
    """
    codes = tuple(sorted({*metrics_subject_codes(metrics), *subject_codes}))
    known = {_bare(code) for code in codes if _bare(code)}
    pattern = subject_code_pattern(codes)
    labels: dict[str, str] = {}

    def label(code: object) -> str:
        key = _bare(code)
        if key not in labels:
            labels[key] = ORDINAL_LABEL.format(len(labels) + 1)
        return labels[key]

    def text(value: str) -> str:
        if _bare(value) in known:
            return label(value)
        value = _ABSOLUTE_PATH.sub(lambda match: _final_component(match.group()), value)
        return pattern.sub(lambda match: label(match.group()), value) if pattern else value

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, Mapping):
            return {text(str(k)): walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            if _SUBJECT_LIST_KEY.search(key):
                return [label(v) if isinstance(v, int | str) else walk(v) for v in value]
            return [walk(v) for v in value]
        return text(value) if isinstance(value, str) else value

    sanitized = {}
    for key, value in metrics.items():
        if key in PATH_KEYS and isinstance(value, str):
            sanitized[key] = text(_final_component(value))
        else:
            sanitized[text(str(key))] = walk(value, str(key))
    return sanitized


def write_sanitized_metrics(
    metrics: Mapping[str, Any], folder: str | Path, subject_codes: Sequence[str] = ()
) -> Path:
    """Write :func:`sanitize_metrics`'s copy as ``folder/metrics.json`` and return its path."""
    path = Path(folder) / "metrics.json"
    path.write_text(
        json.dumps(sanitize_metrics(metrics, subject_codes), indent=2) + "\n", encoding="utf-8"
    )
    return path


__all__ = [
    "ORDINAL_LABEL",
    "PATH_KEYS",
    "dataset_subject_codes",
    "metrics_subject_codes",
    "sanitize_metrics",
    "subject_codes",
    "write_sanitized_metrics",
]
