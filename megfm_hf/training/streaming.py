"""Stream training windows from a dataset's Parquet shards, a record batch at a time.

``datasets.load_dataset("parquet", streaming=True)`` decodes and formats every window on its
own, which holds a data loader to tens of windows per second at 306 sensors x 1000 samples.
Here each shard (one recording) is read with pyarrow a record batch at a time and its signals
are reshaped into NumPy arrays without per-window work
(:func:`~megfm_hf.data.shards.iter_shard_rows`); ``datasets`` still does the rest: shards
spread over data-loader workers, shard order and a shuffle buffer reseeded every epoch.
``benchmarks/bench_dataloader.py`` measures both.

Every streamed window carries a ``window_index`` (its position in the shards, in the order
given), from which :class:`~megfm_hf.training.MEGDataCollator` seeds its mask as it does for
the Arrow dataset's rows. Training streams repeat without end (:class:`RepeatedStream`), so
that a resumed run, which the ``Trainer`` fast-forwards by the number of batches already
trained on, lands on the batch the uninterrupted run trained on next.

Shards hold one recording each, so one subject each: subject splits select whole shards, and
no window is read to find out whose it is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
from torch.utils.data import IterableDataset

from ..data.shards import iter_shard_rows
from .collator import WINDOW_INDEX
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


def _shard_rows(shards: list[tuple[str, int]]) -> Iterator[dict[str, Any]]:
    """The rows of ``(path, index of its first window)`` shards, each with its window index."""
    for path, first_index in shards:
        for number, row in enumerate(iter_shard_rows(path)):
            row[WINDOW_INDEX] = first_index + number
            yield row


def _index_windows(shards: Sequence[str | Path]) -> list[tuple[str, int]]:
    """Each shard with the index of its first window: the windows of the shards before it
    (read from the Parquet footers, not from the rows)."""
    if not shards:
        raise TrainingDataError("no shards to stream.")
    indexed, first_index = [], 0
    for shard in shards:
        indexed.append((str(shard), first_index))
        first_index += pq.read_metadata(shard).num_rows
    return indexed


def _stream(
    shards: list[tuple[str, int]], buffer_size: int | None, seed: int
) -> datasets.IterableDataset:
    dataset = datasets.IterableDataset.from_generator(_shard_rows, gen_kwargs={"shards": shards})
    return dataset if buffer_size is None else dataset.shuffle(seed=seed, buffer_size=buffer_size)


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
        Rows as :func:`~megfm_hf.data.shards.iter_shard_rows` yields them, plus
        ``window_index``: the window's position in ``shards`` read one after another (the
        same in every order and every epoch), ready for
        :class:`~megfm_hf.training.MEGDataCollator`. Data-loader workers share the shards.
    """
    return _stream(_index_windows(shards), buffer_size, seed)


class RepeatedStream(IterableDataset):
    """Pass after pass over the windows of ``shards``, without end, each pass in its own order.

    A stream has no length, so the ``Trainer`` runs a streamed training as one epoch of
    ``max_steps`` steps and resumes it by skipping as many batches as the checkpoint trained
    on. A stream that ends after one pass would make both go wrong once the run needs more
    than one pass; repeating the passes inside the stream makes batch ``n`` the same in every
    run, interrupted or not.

    Parameters
    ----------
    shards : sequence of str | Path
        Parquet window shards, as for :func:`stream_windows`.
    buffer_size : int, optional
        Windows in the shuffle buffer; ``None`` repeats the shards in order.
    seed : int
        Seed of the passes: pass ``p`` is shuffled with :meth:`pass_seed` ``(p)``, drawn from
        ``seed`` and ``p``.

    Notes
    -----
    Rows are those of :func:`stream_windows`, ``window_index`` included. Data-loader workers
    share the shards of every pass; a worker left without shards yields nothing.
    """

    def __init__(
        self, shards: Sequence[str | Path], *, buffer_size: int | None = 1024, seed: int = 0
    ):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        self.shards = _index_windows(shards)
        self.buffer_size = buffer_size
        self.seed = seed

    def pass_seed(self, number: int) -> int:
        """The shuffle seed of pass ``number`` (counted from 0)."""
        return int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for number in itertools.count():
            empty = True
            for row in _stream(self.shards, self.buffer_size, self.pass_seed(number)):
                empty = False
                yield row
            if empty:  # no windows (in this data-loader worker): nothing to repeat
                return
