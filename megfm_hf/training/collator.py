"""Batching MEG windows: pad sensors to the batch maximum, build the sensor mask, draw masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..modeling.configuration_megfm import MEGConfig
from ..modeling.modeling_megfm import compute_signal_mask

MODEL_INPUTS = ("input_values", "sensor_positions", "sensor_types", "sensor_mask")

#: Row key naming a window's position in its dataset (set by
#: :class:`~megfm_hf.training.WindowRows` and :func:`~megfm_hf.training.stream_windows`).
#: Batches whose rows all carry it draw their mask from a seed of these positions, not from the
#: collator's running stream.
WINDOW_INDEX = "window_index"


def _as_array(value: Any, dtype: type | None) -> np.ndarray:
    """A row's value as a NumPy array, without a copy where it already is one."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _check_sensor_counts(
    index: int, row: Mapping[str, Any], signal: np.ndarray, sensor_info: Mapping[str, np.ndarray]
) -> None:
    """Raise unless a row's sensor arrays describe as many sensors as its signal has."""
    n = signal.shape[0]
    expected = {"sensor_positions": (n, 6), "sensor_types": (n,), "sensor_mask": (n,)}
    for name, value in sensor_info.items():
        if value.shape != expected[name]:
            window = row.get(WINDOW_INDEX)
            where = f"row {index} of the batch" + ("" if window is None else f" (window {window})")
            raise ValueError(
                f"{where}: {name} has shape {value.shape} but input_values has shape "
                f"{signal.shape}; expected {name} of shape {expected[name]}, one entry per sensor."
            )


@dataclass
class MEGDataCollator:
    """Collate dataset rows (one window each) into model inputs.

    Windows from different MEG systems have different sensor counts, so every batch is padded
    to its own largest sensor count (never to a global maximum, which would waste compute),
    padded sensors are marked False in ``sensor_mask`` and hold zeros. For pretraining, the
    collator also draws the reconstruction mask with the model's ratios, reproducibly:

    - rows that carry their position in the dataset (``window_index``, as
      :class:`~megfm_hf.training.WindowRows` and :func:`~megfm_hf.training.stream_windows`
      deliver them, and so every ``Trainer`` run on a window dataset, streamed or not) get the
      mask drawn from a seed of ``seed`` and those positions. The mask
      of a batch then depends on nothing but which windows it holds, in which order: not on
      data-loader workers, on how many batches came before, or on whether the run was resumed
      from a checkpoint (the ``Trainer`` skips the batches already trained on without
      collating them, which would restart a running stream). Evaluation, in dataset order,
      hides the same tokens every time, so its losses compare across checkpoints;
    - other rows (a plain list, a stream of other rows) take the next masks of the collator's
      own seeded stream; each data-loader worker derives its own.

    Parameters
    ----------
    config : MEGConfig, optional
        Model configuration. When given with ``draw_mask=True``, ``mask`` is drawn with
        ``config.mask_ratio``, ``mask_sensor_fraction`` and ``mask_time_fraction``; its
        ``patch_length`` is also checked against every window's length.
    draw_mask : bool
        Draw a pretraining ``mask`` of shape (batch, sensors, patches) (needs ``config``).
    seed : int
        Non-negative seed of the masks. Give each process of a distributed run its own (the
        training scripts add the rank).
    pad_to_multiple_of : int, optional
        Round the padded sensor count up to a multiple of this (steadier shapes for compiled
        kernels).

    Notes
    -----
    Rows are mappings with ``input_values`` (sensors, samples), ``sensor_positions``
    (sensors, 6), ``sensor_types`` (sensors,) and optionally ``sensor_mask`` (sensors,) and
    ``labels``; other keys (subject, state, ...) are dropped. Values may be tensors, NumPy
    arrays or lists, as the ``datasets`` formats deliver them.
    """

    config: MEGConfig | None = None
    draw_mask: bool = False
    seed: int = 0
    pad_to_multiple_of: int | None = None
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.draw_mask and self.config is None:
            raise ValueError(
                "MEGDataCollator: draw_mask=True needs the model config to know the mask ratios."
            )
        if self.seed < 0:
            raise ValueError(f"MEGDataCollator: seed must be non-negative, got {self.seed}.")
        self.generator = torch.Generator().manual_seed(self.seed)
        self._worker: int | None = None

    def _reseed_for_worker(self) -> None:
        """Give each data-loader worker its own mask stream (workers start as copies)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and info.id != self._worker:
            self.generator.manual_seed(self.seed * 1_000_003 + info.id + 1)
            self._worker = info.id

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("MEGDataCollator received an empty list of rows.")
        signals = [_as_array(row["input_values"], np.float32) for row in rows]
        num_samples = {signal.shape[-1] for signal in signals}
        if len(num_samples) != 1:
            raise ValueError(
                f"windows in one batch must have the same number of samples; got {sorted(num_samples)}."
            )
        (length,) = num_samples
        if self.config is not None and length % self.config.patch_length:
            raise ValueError(
                f"windows have {length} samples, not a multiple of the model's patch_length="
                f"{self.config.patch_length}; build the dataset with the model's processor settings."
            )
        num_sensors = max(signal.shape[0] for signal in signals)
        if self.pad_to_multiple_of:
            num_sensors = -(-num_sensors // self.pad_to_multiple_of) * self.pad_to_multiple_of

        batch_size = len(rows)
        batch = {
            "input_values": torch.zeros(batch_size, num_sensors, length),
            "sensor_positions": torch.zeros(batch_size, num_sensors, 6),
            "sensor_types": torch.zeros(batch_size, num_sensors, dtype=torch.long),
            "sensor_mask": torch.zeros(batch_size, num_sensors, dtype=torch.bool),
        }
        # Rows are copied straight into the batch's memory (no tensor per row).
        values, positions, types, valid = (batch[name].numpy() for name in MODEL_INPUTS)
        for index, (row, signal) in enumerate(zip(rows, signals, strict=True)):
            count = signal.shape[0]
            sensor_info = {
                "sensor_positions": _as_array(row["sensor_positions"], np.float32),
                "sensor_types": _as_array(row["sensor_types"], np.int64),
            }
            if row.get("sensor_mask") is not None:
                sensor_info["sensor_mask"] = _as_array(row["sensor_mask"], bool)
            _check_sensor_counts(index, row, signal, sensor_info)
            values[index, :count] = signal
            positions[index, :count] = sensor_info["sensor_positions"]
            types[index, :count] = sensor_info["sensor_types"]
            valid[index, :count] = sensor_info.get("sensor_mask", True)
        # Bad sensors may hold anything; the model ignores them, zeros keep the batch finite.
        batch["input_values"].masked_fill_(~batch["sensor_mask"][:, :, None], 0.0)

        if "labels" in rows[0] and rows[0]["labels"] is not None:
            labels = [row["labels"] for row in rows]
            # NumPy/torch formats deliver float32 scalars or arrays (regression, multi-label),
            # which are not Python floats; an integer dtype would truncate them.
            floating = np.issubdtype(np.asarray(labels[0]).dtype, np.floating)
            dtype = torch.float32 if floating else torch.long
            stacked = np.stack([_as_array(label, None) for label in labels])
            batch["labels"] = torch.from_numpy(stacked).to(dtype)
        if self.draw_mask:
            batch["mask"] = compute_signal_mask(
                batch["sensor_mask"],
                length // self.config.patch_length,
                self.config.mask_ratio,
                self.config.mask_sensor_fraction,
                self.config.mask_time_fraction,
                generator=self._mask_generator(rows),
            )
        return batch

    def _mask_generator(self, rows: Sequence[Mapping[str, Any]]) -> torch.Generator:
        """The generator of this batch's mask: seeded by the rows' dataset positions where
        every row has one, otherwise the collator's (per-worker) running stream."""
        positions = [row.get(WINDOW_INDEX) for row in rows]
        if any(position is None for position in positions):
            self._reseed_for_worker()
            return self.generator
        entropy = [self.seed, *(int(position) for position in positions)]
        seed = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))
