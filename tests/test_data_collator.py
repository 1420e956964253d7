"""Rows of a window dataset whose sensor arrays disagree with their signal are named clearly."""

from __future__ import annotations

import re

import numpy as np
import pytest

from megfm_hf.data import MEGProcessor
from megfm_hf.data.testing import make_raw
from megfm_hf.training.collator import WINDOW_INDEX, MEGDataCollator


def _rows(n_sites: int = 6) -> list[dict[str, np.ndarray]]:
    inputs = MEGProcessor(window_seconds=1.0, reject=None)(make_raw(n_sites=n_sites), mode="fixed")
    names = ("input_values", "sensor_positions", "sensor_types", "sensor_mask")
    return [{name: inputs[name][i] for name in names} for i in range(len(inputs["input_values"]))]


def test_rows_of_different_systems_collate():
    rows = _rows(6)[:2] + _rows(4)[:2]
    batch = MEGDataCollator()(rows)
    assert tuple(batch["input_values"].shape) == (4, 18, 250)
    assert not batch["sensor_mask"][2:, 12:].any()


@pytest.mark.parametrize(
    ("name", "cut", "shape"),
    [("sensor_positions", 3, "(15, 6)"), ("sensor_types", 1, "(17,)"), ("sensor_mask", 2, "(16,)")],
)
def test_sensor_arrays_shorter_than_the_signal_name_the_row(name, cut, shape):
    rows = _rows(6)
    rows[2][name] = rows[2][name][:-cut]
    with pytest.raises(
        ValueError, match=re.escape(f"row 2 of the batch: {name} has shape {shape}")
    ):
        MEGDataCollator()(rows)
    rows[2][WINDOW_INDEX] = 41
    with pytest.raises(ValueError, match=r"row 2 of the batch \(window 41\).*\(18, 250\)"):
        MEGDataCollator()(rows)
