"""Evaluation masks that hide whole sensors, fixed by a seed.

The valid sensors of a sensor array are dealt into ``n_folds`` disjoint groups, stratified by
sensor type. Every window is reconstructed ``n_folds`` times, each time with one group hidden
(all its time patches), so every valid sensor is hidden exactly once, the same sensors are
hidden in every window of the array, and averages over epochs (evoked responses) compare the
same hidden sensors throughout.
"""

from __future__ import annotations

import hashlib

import numpy as np


def layout_key(positions: np.ndarray, types: np.ndarray) -> str:
    """A stable identifier of a sensor array (positions rounded to 0.1 mm, types).

    Parameters
    ----------
    positions : np.ndarray, shape (S, 6)
        Sensor positions (m) and orientations.
    types : np.ndarray, shape (S,)
        Sensor type codes.
    """
    rounded = np.round(np.asarray(positions, dtype=np.float64) * 1e4).astype(np.int64)
    digest = hashlib.sha1(rounded.tobytes() + np.asarray(types, dtype=np.int64).tobytes())
    return digest.hexdigest()[:12]


def sensor_folds(
    types: np.ndarray, valid: np.ndarray | None, n_folds: int, seed: int
) -> np.ndarray:
    """Deal the valid sensors into ``n_folds`` groups, balanced within every sensor type.

    Parameters
    ----------
    types : np.ndarray of int, shape (S,)
        Sensor type codes.
    valid : np.ndarray of bool, shape (S,), optional
        Sensors that may be hidden; others get fold -1. All when None.
    n_folds : int
        Number of groups (>= 2); group ``k`` is hidden in pass ``k``.
    seed : int
        Seed of the random assignment.

    Returns
    -------
    folds : np.ndarray of int, shape (S,)
        Group of every sensor, -1 for sensors never hidden.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds={n_folds}; expected at least 2 sensor groups")
    types = np.asarray(types)
    valid = np.ones(types.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    rng = np.random.default_rng(seed)
    folds = np.full(types.shape, -1, dtype=np.int64)
    offset = 0
    for code in np.unique(types[valid]):
        members = np.flatnonzero(valid & (types == code))
        members = members[rng.permutation(members.size)]
        folds[members] = (np.arange(members.size) + offset) % n_folds
        offset += members.size
    return folds


__all__ = ["layout_key", "sensor_folds"]
