"""Stream training windows from a dataset's Parquet shards, a record batch at a time.

``datasets.load_dataset("parquet", streaming=True)`` decodes and formats every window on its
own, which holds a data loader to tens of windows per second at 306 sensors x 1000 samples.
Here each shard (one recording) is read with pyarrow a record batch at a time and its signals
are reshaped into NumPy arrays without per-window work
(:func:`~megfm_hf.data.shards.iter_shard_rows`); ``datasets`` still does the rest: shards
spread over data-loader workers, shard order and a shuffle buffer reseeded every epoch.
``benchmarks/bench_dataloader.py`` measures both.

Shards hold one recording each, so one subject each: subject splits select whole shards, and
no window is read to find out whose it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from ..data.shards import iter_shard_rows
from .data import TrainingDataError, shard_files


@dataclass(frozen=True)
class ShardInfo:
    """One Parquet shard: its file, subject, label, sampling rate and number of windows."""

    path: Path
    subject: str
    label: str
    sfreq: float
    n_windows: int


def index_shards(path: str | Path) -> list[ShardInfo]:
    """Who each shard of a dataset belongs to, read from its string columns only.

    Parameters
    ----------
    path : str | Path
        A dataset folder built by ``megfm build-dataset``, or a folder of its Parquet shards.

    Returns
    -------
    list of ShardInfo
        One per non-empty shard, in file-name order.
    """
    infos = []
    for shard in shard_files(path):
        table = pq.read_table(shard, columns=["subject", "label", "sfreq"])
        if table.num_rows == 0:
            continue
        subjects = set(table.column("subject").to_pylist())
        labels = {value or "" for value in table.column("label").to_pylist()}
        if len(subjects) > 1 or len(labels) > 1:
            raise TrainingDataError(
                f"shard {shard.name} holds windows of {len(subjects)} subjects and {len(labels)} "
                "labels; streaming needs one recording (one subject, one label) per shard, as "
                "`megfm build-dataset` writes them."
            )
        sfreq = float(table.column("sfreq")[0].as_py())
        infos.append(ShardInfo(shard, subjects.pop(), labels.pop(), sfreq, table.num_rows))
    if not infos:
        raise TrainingDataError(f"dataset {path} has no windows.")
    return infos


def shard_subject_labels(shards: Sequence[ShardInfo]) -> dict[str, str]:
    """One label per subject; raise when a subject's shards disagree."""
    labels: dict[str, str] = {}
    for shard in shards:
        if labels.setdefault(shard.subject, shard.label) != shard.label:
            raise TrainingDataError(
                f"subject {shard.subject} has windows with different labels "
                f"{sorted({labels[shard.subject], shard.label})}; a subject needs a single label."
            )
    return labels


def _shard_rows(shards: list[str]) -> Iterator[dict[str, Any]]:
    for shard in shards:
        yield from iter_shard_rows(shard)


def stream_windows(
    shards: Sequence[str | Path], *, buffer_size: int | None = 1024, seed: int = 0
) -> datasets.IterableDataset:
    """Windows of ``shards`` as a shuffled ``datasets.IterableDataset`` of NumPy rows.

    Parameters
    ----------
    shards : sequence of str | Path
        Parquet window shards (e.g. ``[s.path for s in index_shards(folder)]``).
    buffer_size : int, optional
        Windows in the shuffle buffer (about 1.2 MB each at 306 x 1000 float32); ``None``
        streams the shards in order, unshuffled (for evaluation).
    seed : int
        Seed of the shard order and the buffer; ``set_epoch`` (which the ``Trainer`` calls)
        gives every epoch another order.

    Returns
    -------
    datasets.IterableDataset
        Rows as :func:`~megfm_hf.data.shards.iter_shard_rows` yields them, ready for
        :class:`~megfm_hf.training.MEGDataCollator`. Data-loader workers share the shards.
    """
    if not shards:
        raise TrainingDataError("no shards to stream.")
    dataset = datasets.IterableDataset.from_generator(
        _shard_rows, gen_kwargs={"shards": [str(shard) for shard in shards]}
    )
    return dataset if buffer_size is None else dataset.shuffle(seed=seed, buffer_size=buffer_size)
