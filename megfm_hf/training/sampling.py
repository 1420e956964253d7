"""Training order: shuffled windows, batched one sensor array at a time.

MEG systems differ in sensor count (306 for MEGIN/Elekta, 275 for CTF, 248 for 4D/BTi, 157 to
208 for KIT/Yokogawa), and the collator pads every batch to its largest window. A shuffled
dataset that mixes systems would then pad nearly every batch to the largest helmet; batching
windows of equal sensor counts removes that padding, and with it the compute spent on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from torch.utils.data import IterableDataset, Sampler
from transformers import TrainingArguments


def sensor_counts(dataset: datasets.Dataset) -> list[int]:
    """Sensors of every window, read from the Arrow ``sensor_types`` column (no signal decoded).

    Parameters
    ----------
    dataset : datasets.Dataset
        Window rows with a ``sensor_types`` list column (any format, any selection of rows).

    Returns
    -------
    list of int
        The number of sensors of each row, in the dataset's order.
    """
    if "sensor_types" not in dataset.column_names:
        raise ValueError(
            f"dataset has no 'sensor_types' column (columns: {dataset.column_names}); window "
            "datasets built by `megfm build-dataset` have one."
        )
    column = dataset.select_columns(["sensor_types"]).with_format("arrow")[:]["sensor_types"]
    return pc.list_value_length(column).to_pylist()


def step_windows(args: TrainingArguments) -> int:
    """Windows of one optimiser step, over all processes and gradient-accumulation steps: the
    group that shares a sensor count, so that every process of a step pads alike."""
    return args.train_batch_size * args.gradient_accumulation_steps * args.world_size


def data_seed(args: TrainingArguments) -> int:
    """Seed of the training order: ``args.data_seed``, or ``args.seed`` when it is not set
    (as the ``Trainer`` seeds its own samplers)."""
    return args.seed if args.data_seed is None else args.data_seed


class SensorGroupedSampler(Sampler[int]):
    """Random window order in which every group of ``group_size`` windows shares a sensor count.

    Each epoch, the windows of each sensor count are shuffled and cut into groups of
    ``group_size``; the groups of all counts are shuffled together. The few windows left over
    by each count (fewer than ``group_size`` per count) come last, sorted by sensor count, so
    at most one group per sensor count mixes two counts. A dataset of a single system gets a
    plain shuffle.

    Parameters
    ----------
    sensor_counts : sequence of int
        Sensors of every window (see :func:`sensor_counts`).
    group_size : int
        Windows per group: the batch of one optimiser step over all processes and accumulation
        steps, so that every process of a step pads to the same count.
    seed : int
        Non-negative seed of the order (the ``Trainer`` passes ``data_seed`` or ``seed``).

    Notes
    -----
    The order of an epoch depends on ``seed`` and the epoch alone (:meth:`set_epoch`, which
    the ``Trainer`` calls before every epoch), never on a global random state: a run resumed
    in the middle of an epoch, which the ``Trainer`` only restores after it has drawn the
    epoch's order, sees the order of the uninterrupted run.
    """

    def __init__(self, sensor_counts: Sequence[int], group_size: int, seed: int = 0):
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}.")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        self.sensor_counts = np.asarray(sensor_counts, dtype=np.int64)
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` (counted from 0) on the next iteration."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}.")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sensor_counts)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups: list[np.ndarray] = []
        leftovers: list[np.ndarray] = []
        for count in np.unique(self.sensor_counts)[::-1]:
            members = rng.permutation(np.flatnonzero(self.sensor_counts == count))
            whole = len(members) - len(members) % self.group_size
            groups += np.split(members[:whole], whole // self.group_size) if whole else []
            leftovers.append(members[whole:])
        order = [groups[i] for i in rng.permutation(len(groups))] + leftovers
        return iter(np.concatenate(order).tolist() if order else [])


class SensorGroupedStream(IterableDataset):
    """A stream of windows regrouped so that every ``group_size`` consecutive windows share a
    sensor count: the streaming counterpart of :class:`SensorGroupedSampler`.

    Windows wait in one queue per sensor count until ``group_size`` of them are there, then
    leave together; at the end of the stream the partial queues follow, largest count first.
    At most ``group_size`` windows per sensor count wait at any time.

    Parameters
    ----------
    stream : iterable of dict
        Window rows with a ``sensor_types`` entry, e.g.
        :func:`~megfm_hf.training.streaming.stream_windows`. Its ``set_epoch`` is forwarded.
    group_size : int
        Windows per group (see :class:`SensorGroupedSampler`).
    """

    def __init__(self, stream: Iterable[dict[str, Any]], group_size: int):
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}.")
        self.stream = stream
        self.group_size = group_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        waiting: dict[int, list[dict[str, Any]]] = {}
        for row in self.stream:
            queue = waiting.setdefault(len(row["sensor_types"]), [])
            queue.append(row)
            if len(queue) == self.group_size:
                yield from queue
                queue.clear()
        for count in sorted(waiting, reverse=True):
            yield from waiting[count]
