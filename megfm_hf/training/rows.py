"""Window rows for a ``DataLoader``, read from the Arrow dataset a batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch

from ..data.shards import table_rows
from .collator import WINDOW_INDEX
from .sampling import sensor_counts


class WindowRows(torch.utils.data.Dataset):
    """A window dataset as a map-style torch dataset that decodes whole batches at once.

    A ``DataLoader`` asks for a batch of indices (``__getitems__``); their rows are gathered
    from the memory-mapped Arrow table and every column is converted once for the batch
    (:func:`~megfm_hf.data.shards.column_rows`), so signals arrive as views of one buffer.
    ``datasets``' NumPy formatting converts each window's signal on its own and stacks them
    again; at 306 x 1000 samples this reads about twice as fast
    (``benchmarks/bench_dataloader.py``).

    Parameters
    ----------
    dataset : datasets.Dataset
        Window rows as built by ``megfm build-dataset`` (any selection of rows, any format).

    Notes
    -----
    Rows are dicts of NumPy arrays (read-only views), NumPy scalars and strings, the same keys
    as the dataset's columns, plus ``window_index``: the row's position in ``dataset``, from
    which :class:`~megfm_hf.training.MEGDataCollator` seeds the batch's mask. The collator
    copies them into its batch.
    """

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset.with_format("arrow")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        rows = table_rows(self.dataset[list(indices)])
        for index, row in zip(indices, rows, strict=True):
            row[WINDOW_INDEX] = int(index)
        return rows

    def sensor_counts(self) -> list[int]:
        """Sensors of every window, without decoding any signal."""
        return sensor_counts(self.dataset)
