"""Reconstruction metrics: normalised MSE and Pearson r per sensor type, continuous and evoked.

Protocol
--------
Every valid sensor is hidden once (whole sensor, all patches; see :mod:`.masking`) and
predicted from the visible sensors by the model and by the baselines. *Continuous*: the rest
windows of the held-out subjects, every sample of every hidden token. *Evoked*: per condition
and held-out subject, the average over epochs of the reconstructed windows against the average
over epochs of the true windows (the same sensors are hidden in every epoch), over the whole
window (``tmin`` to ``tmin + window_seconds``); the per-subject evoked responses are then pooled.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..modeling.configuration_megfm import SENSOR_TYPES


def nmse(target: np.ndarray, predicted: np.ndarray) -> float:
    """Normalised mean squared error: sum of squared error / sum of squared target.

    0 is perfect; predicting zeros gives 1. NaN when the target is all zeros or empty.
    """
    target = np.asarray(target, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    energy = float(np.sum(target**2))
    if target.size == 0 or energy == 0.0:
        return float("nan")
    return float(np.sum((target - predicted) ** 2) / energy)


def pearson_r(target: np.ndarray, predicted: np.ndarray) -> float:
    """Pearson correlation of the flattened arrays; NaN when either is constant or empty."""
    target = np.asarray(target, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    if target.size < 2:
        return float("nan")
    target = target - target.mean()
    predicted = predicted - predicted.mean()
    denominator = np.sqrt(np.sum(target**2) * np.sum(predicted**2))
    if denominator == 0.0:
        return float("nan")
    return float(np.sum(target * predicted) / denominator)


def scores_by_type(
    target: np.ndarray,
    predicted: np.ndarray,
    types: np.ndarray,
    selected: np.ndarray,
    patch_length: int,
) -> dict[str, dict[str, float | int]]:
    """NMSE and Pearson r per sensor type over the selected (window, sensor) traces.

    Parameters
    ----------
    target, predicted : np.ndarray, shape (N, S, T)
    types : np.ndarray of int, shape (S,)
        Sensor type codes (indices of ``SENSOR_TYPES``).
    selected : np.ndarray of bool, shape (N, S)
        Traces to score (hidden, valid sensors).
    patch_length : int
        Samples per token, to count tokens.

    Returns
    -------
    scores : dict
        ``{type name: {"nmse", "pearson_r", "n_tokens"}}`` for every type present.
    """
    scores: dict[str, dict[str, float | int]] = {}
    for code in np.unique(types):
        chosen = selected & (types == code)[None, :]
        if not chosen.any():
            continue
        true_values, predicted_values = target[chosen], predicted[chosen]
        scores[SENSOR_TYPES[int(code)]] = {
            "nmse": nmse(true_values, predicted_values),
            "pearson_r": pearson_r(true_values, predicted_values),
            "n_tokens": int(chosen.sum()) * (target.shape[-1] // patch_length),
        }
    return scores


def evoked_averages(
    signals: np.ndarray, valid: np.ndarray, groups: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Average windows per group (one group = one subject's epochs of one condition).

    Parameters
    ----------
    signals : np.ndarray, shape (N, S, T)
    valid : np.ndarray of bool, shape (N, S)
    groups : np.ndarray of str, shape (N,)

    Returns
    -------
    averages : dict
        ``{group: (average (S, T), valid (S,))}``; a sensor counts as valid when it is valid in
        every epoch of the group.
    """
    return {
        str(group): (
            signals[groups == group].mean(axis=0),
            valid[groups == group].all(axis=0),
        )
        for group in np.unique(groups)
    }


def evoked_scores(
    true: Mapping[str, tuple[np.ndarray, np.ndarray]],
    predicted: Mapping[str, tuple[np.ndarray, np.ndarray]],
    types: np.ndarray,
    patch_length: int,
) -> dict[str, dict[str, float | int]]:
    """Scores of evoked responses pooled over groups (subjects) of one condition.

    Parameters
    ----------
    true, predicted : Mapping
        :func:`evoked_averages` of the true and the reconstructed windows, same keys.
    types : np.ndarray of int, shape (S,)
    patch_length : int

    Returns
    -------
    scores : dict
        As :func:`scores_by_type`, where a token is one (subject, sensor, patch).
    """
    keys = sorted(true)
    target = np.stack([true[key][0] for key in keys])
    estimate = np.stack([predicted[key][0] for key in keys])
    selected = np.stack([true[key][1] for key in keys])
    return scores_by_type(target, estimate, types, selected, patch_length)


__all__ = ["evoked_averages", "evoked_scores", "nmse", "pearson_r", "scores_by_type"]
