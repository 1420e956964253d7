"""Arrow schema of window rows, and atomic Parquet shards (one per recording).

Sensor counts differ between MEG systems (122 to 306 here), so ``input_values`` and
``sensor_positions`` are ``Array2D`` features with a variable first dimension:
``Array2D(shape=(None, n_samples))`` and ``Array2D(shape=(None, 6))``. One dataset can then mix
systems; the number of samples per window is fixed for a dataset (it is part of the schema), and
the collator pads sensors per batch. ``datasets`` stores such a column as a list of lists, still
converted to numpy without per-element Python work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.features.features import Array2DExtensionType

STRING_COLUMNS = ("subject", "session", "state", "label", "event", "recording")


def window_features(n_samples: int) -> datasets.Features:
    """Return the features of a window row.

    Parameters
    ----------
    n_samples : int
        Samples per window.

    Returns
    -------
    features : datasets.Features
        ``input_values`` Array2D float32 (sensors x samples), ``sensor_positions`` Array2D float32
        (sensors x 6), ``sensor_types`` list of int64, ``sensor_mask`` list of bool, ``sfreq``
        float32 (Hz), ``onset_s`` float64 (seconds), and the strings ``subject``, ``session``,
        ``state``, ``label``, ``event``, ``recording``.
    """
    return datasets.Features(
        {
            "input_values": datasets.Array2D(shape=(None, n_samples), dtype="float32"),
            "sensor_positions": datasets.Array2D(shape=(None, 6), dtype="float32"),
            "sensor_types": datasets.List(datasets.Value("int64")),
            "sensor_mask": datasets.List(datasets.Value("bool")),
            "sfreq": datasets.Value("float32"),
            "onset_s": datasets.Value("float64"),
            **{name: datasets.Value("string") for name in STRING_COLUMNS},
        }
    )


def _array2d(values: np.ndarray, dtype: str) -> pa.ExtensionArray:
    """(n, rows, cols) numpy -> Array2D(None, cols) extension array without per-row Python."""
    n, rows, cols = values.shape
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(n * rows + 1, dtype=np.int32) * cols),
        pa.array(np.ascontiguousarray(values, dtype=dtype).reshape(-1)),
    )
    outer = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * rows), inner)
    return pa.ExtensionArray.from_storage(Array2DExtensionType((None, cols), dtype), outer)


def _repeated_list(row: np.ndarray, n: int, pa_type: pa.DataType) -> pa.ListArray:
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * len(row))
    return pa.ListArray.from_arrays(offsets, pa.array(np.tile(row, n), type=pa_type))


def rows_table(
    features: datasets.Features,
    *,
    input_values: np.ndarray,
    sensor_positions: np.ndarray,
    sensor_types: np.ndarray,
    sensor_mask: np.ndarray,
    sfreq: float,
    onset_s: np.ndarray,
    strings: Mapping[str, Any],
) -> pa.Table:
    """Build a table of window rows sharing one sensor array.

    Parameters
    ----------
    features : datasets.Features
        From :func:`window_features`.
    input_values : np.ndarray, shape (n, n_sensors, n_samples)
    sensor_positions : np.ndarray, shape (n_sensors, 6)
    sensor_types, sensor_mask : np.ndarray, shape (n_sensors,)
    sfreq : float
    onset_s : np.ndarray, shape (n,)
    strings : Mapping
        Each string column: one value for all rows, or a list of ``n`` values.
    """
    n = len(input_values)
    columns = {
        "input_values": _array2d(input_values, "float32"),
        "sensor_positions": _array2d(
            np.broadcast_to(sensor_positions, (n, *sensor_positions.shape)), "float32"
        ),
        "sensor_types": _repeated_list(sensor_types.astype(np.int64), n, pa.int64()),
        "sensor_mask": _repeated_list(sensor_mask.astype(bool), n, pa.bool_()),
        "sfreq": pa.array(np.full(n, sfreq, dtype=np.float32)),
        "onset_s": pa.array(np.asarray(onset_s, dtype=np.float64)),
    }
    for name in STRING_COLUMNS:
        value = strings[name]
        columns[name] = pa.array(
            [value] * n if isinstance(value, str) else list(value), pa.string()
        )
    return pa.table(columns, schema=features.arrow_schema)


class AtomicParquetWriter:
    """Write a Parquet file under a temporary name and rename it into place on success.

    A process killed while writing leaves only ``<name>.tmp-<pid>``, never a truncated
    ``<name>``; :func:`remove_stale_temporaries` clears such leftovers.
    """

    def __init__(self, path: str | Path, schema: pa.Schema, *, row_group_size: int = 64) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self.row_group_size = row_group_size
        self._writer = pq.ParquetWriter(self.tmp_path, schema)
        self.num_rows = 0

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self.num_rows += table.num_rows

    def commit(self) -> Path:
        self._writer.close()
        with open(self.tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> None:
    """Write a text file atomically (temporary file, fsync, rename).

    Parameters
    ----------
    path : str | Path
        The file to write.
    text : str
        Its content (UTF-8).
    mode : int | None
        Permission bits of the file (``0o600`` for secrets). The temporary file is created with
        them, so the content is never readable by others, not even before the rename. ``None``
        uses the default permissions (``0o666`` less the umask).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    # a leftover temporary would keep its old permissions: start from a fresh file
    tmp.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(tmp, flags, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)  # exactly mode, whatever the umask
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete ``*.tmp-*`` files left by killed writers; return how many."""
    count = 0
    for tmp in Path(folder).glob("*.tmp-*"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def parquet_num_rows(path: str | Path) -> int:
    """Rows of a Parquet file, from its footer (``-1`` when unreadable)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowInvalid):
        return -1


def iter_shard_rows(path: str | Path, *, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Yield the rows of a window shard as dicts of NumPy arrays and scalars."""
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_size):
        if len(set(batch.column("sensor_types").value_lengths().to_pylist())) > 1:
            raise ValueError(f"window shard {path} mixes sensor counts within one recording")
        yield from table_rows(pa.Table.from_batches([batch]))


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of a window table as dicts, decoded a column at a time (see :func:`column_rows`)."""
    columns = {name: column_rows(table.column(name)) for name in table.column_names}
    return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def column_rows(column: pa.Array | pa.ChunkedArray) -> np.ndarray | list:
    """One value per row of an Arrow column, converted for the whole column at once.

    ``Array2D`` and list columns become NumPy arrays of shape ``(rows, n, ...)`` when every row
    has the same length (views of one buffer), and otherwise an object array of per-row
    arrays; numeric and boolean columns become NumPy arrays, strings a list. ``datasets``'
    NumPy formatting converts every row of a list column on its own and then stacks them,
    which at 306 x 1000 samples is most of the cost of reading a window.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    storage = column.storage if isinstance(column, pa.ExtensionArray) else column
    if not pa.types.is_list(storage.type) and not pa.types.is_large_list(storage.type):
        if pa.types.is_string(storage.type) or pa.types.is_large_string(storage.type):
            return storage.to_pylist()
        return storage.to_numpy(zero_copy_only=False)
    lengths = storage.value_lengths().to_numpy(zero_copy_only=False)
    if not len(lengths):
        return np.empty(0, dtype=object)
    values = storage.flatten()
    inner = ()
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        inner = (len(values[0]) if len(values) else 0,)
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False)
    if (lengths == lengths[0]).all():
        return flat.reshape(len(lengths), int(lengths[0]), *inner)
    rows = np.empty(len(lengths), dtype=object)
    bounds = np.cumsum(lengths)[:-1] * (inner[0] if inner else 1)
    rows[:] = [part.reshape(-1, *inner) for part in np.split(flat, bounds)]
    return rows


__all__ = [
    "AtomicParquetWriter",
    "atomic_write_text",
    "column_rows",
    "iter_shard_rows",
    "parquet_num_rows",
    "remove_stale_temporaries",
    "rows_table",
    "table_rows",
    "window_features",
]
