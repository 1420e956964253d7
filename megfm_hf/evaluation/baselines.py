"""Reconstruction baselines for hidden sensors: zeros, spatial interpolation and ridge regression.

All three predict the same hidden sensors as the model (the sensor groups of :mod:`.masking`)
from the visible sensors of the same window, and are vectorised over windows and samples.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.linear_model import RidgeCV

logger = logging.getLogger(__name__)

#: ridge penalties tried by generalised cross-validation (inputs are in processor units)
RIDGE_ALPHAS = tuple(10.0 ** np.arange(-2, 5))


def interpolation_weights(
    positions: np.ndarray,
    types: np.ndarray,
    hidden: np.ndarray,
    visible: np.ndarray,
    *,
    width: float | None = None,
) -> np.ndarray:
    """Gaussian-kernel weights from visible to hidden sensors of the same type.

    The weight of visible sensor ``j`` for hidden sensor ``i`` is
    ``exp(-d_ij**2 / (2 * width**2)) * max(o_i . o_j, 0)`` for sensors of the same type (0
    otherwise), normalised over ``j``; ``d`` is the distance between coil centres (m) and ``o``
    the unit orientations, so a planar gradiometer is interpolated from neighbours measuring the
    same gradient direction.

    Parameters
    ----------
    positions : np.ndarray, shape (S, 6)
        Positions (m) and unit orientations.
    types : np.ndarray of int, shape (S,)
    hidden, visible : np.ndarray of bool, shape (S,)
    width : float, optional
        Kernel width, m. Defaults to the median distance from a sensor to its nearest
        same-type neighbour at another site (about the sensor spacing).

    Returns
    -------
    weights : np.ndarray, shape (S, S)
        Row ``i`` (a hidden sensor) sums to 1 when it has a visible neighbour of its type, 0
        otherwise (that sensor is then predicted as 0); rows of other sensors are 0.
    """
    xyz = np.asarray(positions[:, :3], dtype=np.float64)
    orientation = np.asarray(positions[:, 3:6], dtype=np.float64)
    distance = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    same_type = types[:, None] == types[None, :]
    if width is None:
        other_site = same_type & (distance > 1e-4)
        nearest = np.where(other_site, distance, np.inf).min(axis=1)
        nearest = nearest[np.isfinite(nearest)]
        width = float(np.median(nearest)) if nearest.size else 0.03
    kernel = np.exp(-(distance**2) / (2.0 * width**2))
    kernel *= np.clip(orientation @ orientation.T, 0.0, None)
    kernel *= same_type & hidden[:, None] & visible[None, :]
    total = kernel.sum(axis=1, keepdims=True)
    return np.divide(kernel, total, out=np.zeros_like(kernel), where=total > 0)


def interpolate_hidden(
    signals: np.ndarray,
    valid: np.ndarray,
    positions: np.ndarray,
    types: np.ndarray,
    folds: np.ndarray,
) -> np.ndarray:
    """Predict every valid sensor, in the pass that hides its group, by spatial interpolation.

    Parameters
    ----------
    signals : np.ndarray, shape (N, S, T)
    valid : np.ndarray of bool, shape (N, S)
        Bad sensors are never used as neighbours.
    positions : np.ndarray, shape (S, 6)
    types : np.ndarray of int, shape (S,)
    folds : np.ndarray of int, shape (S,)

    Returns
    -------
    predicted : np.ndarray, shape (N, S, T)
    """
    predicted = np.zeros_like(signals)
    for fold in range(int(folds.max()) + 1):
        hidden = folds == fold
        # Bad sensors differ between recordings: group the windows by their pattern.
        patterns, inverse = np.unique(valid, axis=0, return_inverse=True)
        for index, pattern in enumerate(patterns):
            rows = np.flatnonzero(inverse.ravel() == index)
            weights = interpolation_weights(positions, types, hidden, pattern & ~hidden)
            estimate = np.einsum("ij,njt->nit", weights, signals[rows], optimize=True)
            predicted[np.ix_(rows, np.flatnonzero(hidden))] = estimate[:, hidden]
    return predicted


class RidgeBaseline:
    """Linear maps from the visible to the hidden sensors of each group, fitted on training data.

    For group ``k``, a ridge regression (penalty chosen by generalised cross-validation among
    :data:`RIDGE_ALPHAS`) maps the visible sensors at one time sample to the hidden sensors at
    the same sample; every sample of every training window is one observation. Bad sensors are
    zero in training and test windows alike.

    Parameters
    ----------
    folds : np.ndarray of int, shape (S,)
    max_samples : int
        Cap on training observations (windows x samples), drawn at random with ``seed``.
    seed : int
    """

    def __init__(self, folds: np.ndarray, *, max_samples: int = 50_000, seed: int = 0) -> None:
        self.folds = np.asarray(folds)
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self.models: dict[int, RidgeCV] = {}

    def fit(self, signals: np.ndarray) -> RidgeBaseline:
        """Fit on training windows ``signals`` (N, S, T) of the same sensor array."""
        samples = np.moveaxis(signals, 1, 2).reshape(-1, signals.shape[1])
        if samples.shape[0] > self.max_samples:
            rng = np.random.default_rng(self.seed)
            samples = samples[rng.choice(samples.shape[0], self.max_samples, replace=False)]
        for fold in range(int(self.folds.max()) + 1):
            hidden = self.folds == fold
            model = RidgeCV(alphas=RIDGE_ALPHAS)
            self.models[fold] = model.fit(samples[:, ~hidden], samples[:, hidden])
            logger.debug("ridge group %d: alpha %g", fold, model.alpha_)
        return self

    def predict(self, signals: np.ndarray) -> np.ndarray:
        """Predict every sensor of ``signals`` (N, S, T) in the pass that hides its group."""
        if not self.models:
            raise RuntimeError("RidgeBaseline.predict called before fit")
        samples = np.moveaxis(signals, 1, 2).reshape(-1, signals.shape[1])
        predicted = np.zeros_like(samples)
        for fold, model in self.models.items():
            hidden = self.folds == fold
            predicted[:, hidden] = model.predict(samples[:, ~hidden])
        count, num_sensors, num_samples = signals.shape
        return np.moveaxis(predicted.reshape(count, num_samples, num_sensors), 2, 1)


__all__ = ["RIDGE_ALPHAS", "RidgeBaseline", "interpolate_hidden", "interpolation_weights"]
