"""Pretrained features versus raw-signal features for subject classification.

Method
------
The same classifiers run on two inputs: the model's pooled window features (``pooler_output``)
and raw-signal features (log band power per sensor in the delta 1-4, theta 4-8, alpha 8-13 and
beta 13-30 Hz bands from Welch periodograms, concatenated with the first principal components of
the raw windows; PCA and scaling are fitted inside each training fold). Folds are subject-level
(``StratifiedGroupKFold``: a subject's windows are never split between training and test, and each
fold keeps both classes where possible). Window probabilities are averaged to one probability per
subject. Both classifiers weigh the classes inversely to their frequency in the training fold
(clinical cohorts are imbalanced, and with few subjects per fold an unweighted classifier's
probabilities follow the fold's class balance, which is opposite to its test subjects' and so
pushes subject-level AUROC below chance). AUROC and balanced accuracy (threshold 0.5) get 95%
percentile-bootstrap intervals over subjects; the features-vs-raw AUROC difference gets a paired
permutation test (the ranks of the two inputs' subject probabilities swapped at random per
subject: AUROC depends on ranks only, so classifiers that scale their probabilities differently
stay exchangeable under the null). Band
powers of a sensor marked bad in a window are imputed with the training fold's median, as the
model masks that sensor rather than seeing its zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from scipy.signal import welch
from scipy.stats import rankdata
from sklearn.base import ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

logger = logging.getLogger(__name__)

#: frequency bands of the raw-signal features, Hz
BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
}
#: principal components of the raw windows in the raw-signal features
RAW_PCA_COMPONENTS = 16


def band_power_features(
    signals: np.ndarray, sfreq: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """Log band power per sensor and band (Welch, Hann windows of up to 1 s).

    Parameters
    ----------
    signals : np.ndarray, shape (N, S, T)
    sfreq : float
        Sampling rate, Hz.
    valid : np.ndarray of bool, shape (N, S), optional
        Valid sensors of every window; the band powers of the others are NaN (their signal is
        zeros, whose log power would be an outlier of -12).

    Returns
    -------
    features : np.ndarray, shape (N, S * len(BANDS))
        ``log10`` of the mean power spectral density in each band (processor units squared
        per Hz), sensor-major.
    """
    nperseg = min(signals.shape[-1], int(round(sfreq)))
    frequencies, density = welch(signals, fs=sfreq, nperseg=nperseg, axis=-1)
    powers = []
    for low, high in BANDS.values():
        inside = (frequencies >= low) & (frequencies < high)
        if not inside.any():  # a band narrower than the frequency resolution
            inside = (
                np.abs(frequencies - (low + high) / 2)
                == np.abs(frequencies - (low + high) / 2).min()
            )
        powers.append(density[..., inside].mean(axis=-1))
    stacked = np.log10(np.stack(powers, axis=-1) + 1e-12)  # (N, S, bands)
    if valid is not None:
        stacked[~np.asarray(valid, dtype=bool)] = np.nan
    return stacked.reshape(signals.shape[0], -1).astype(np.float32)


def raw_features(
    signals: np.ndarray, sfreq: float, valid: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Raw-signal features: band powers, then the flattened window (for in-fold PCA).

    ``valid`` is as in :func:`band_power_features`.

    Returns
    -------
    features : np.ndarray, shape (N, S * 4 + S * T)
    n_band_features : int
        Columns that hold band powers; the rest is the raw window.
    """
    bands = band_power_features(signals, sfreq, valid)
    flat = signals.reshape(signals.shape[0], -1).astype(np.float32)
    return np.concatenate([bands, flat], axis=1), bands.shape[1]


def raw_preprocessing(n_band_features: int, n_columns: int, n_train: int) -> ColumnTransformer:
    """Impute and scale band powers; PCA of the raw window (components capped by the training
    size). Both are fitted on the training fold only."""
    components = max(1, min(RAW_PCA_COMPONENTS, n_train - 1, n_columns - n_band_features))
    return ColumnTransformer(
        [
            (
                "band_power",
                # a sensor bad in every training window keeps a constant column
                make_pipeline(
                    SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()
                ),
                slice(0, n_band_features),
            ),
            (
                "raw_pca",
                make_pipeline(PCA(n_components=components, random_state=0), StandardScaler()),
                slice(n_band_features, n_columns),
            ),
        ]
    )


def classifiers(seed: int = 0) -> dict[str, ClassifierMixin]:
    """The classifiers compared on both inputs (unfitted)."""
    return {
        "logistic_regression": LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"),
        "random_forest": RandomForestClassifier(
            n_estimators=200,
            min_samples_leaf=2,
            random_state=seed,
            n_jobs=1,
            class_weight="balanced",
        ),
    }


def subject_folds(
    subjects: np.ndarray, labels: np.ndarray, n_folds: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Subject-level folds over windows: no subject is in a fold's training and test sets.

    Parameters
    ----------
    subjects : np.ndarray of str, shape (N,)
        Subject of every window.
    labels : np.ndarray of int, shape (N,)
    n_folds : int
        Requested folds; reduced to the number of subjects of the rarer class when smaller.
    seed : int

    Returns
    -------
    folds : list of (train indices, test indices)
    """
    per_subject = {s: labels[subjects == s][0] for s in np.unique(subjects)}
    counts = np.bincount(np.asarray(list(per_subject.values())))
    folds = int(min(n_folds, counts[counts > 0].min() if counts.size else 0, len(per_subject)))
    if folds < 2:
        raise ValueError(
            f"subject-level cross-validation needs at least 2 subjects per class; got "
            f"{dict(enumerate(counts.tolist()))}"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups=subjects))


def subject_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    subjects: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    make_model: Callable[[int], Pipeline],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold window probabilities averaged to one probability per subject.

    Parameters
    ----------
    features : np.ndarray, shape (N, F)
    labels : np.ndarray of int, shape (N,)
    subjects : np.ndarray of str, shape (N,)
    folds : list of (train, test) index arrays
    make_model : callable
        ``make_model(n_train)`` returns an unfitted pipeline.

    Returns
    -------
    subject_ids, subject_labels, probabilities : np.ndarray, shape (n_subjects,)
    """
    window_probability = np.full(len(labels), np.nan)
    for train, test in folds:
        model = make_model(len(train)).fit(features[train], labels[train])
        window_probability[test] = model.predict_proba(features[test])[:, 1]
    ids = np.unique(subjects)
    probabilities = np.array([np.nanmean(window_probability[subjects == s]) for s in ids])
    subject_labels = np.array([labels[subjects == s][0] for s in ids])
    return ids, subject_labels, probabilities


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN with a single class."""
    labels = np.asarray(labels)
    positive = labels == 1
    n_positive = int(positive.sum())
    n_negative = labels.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    # Mann-Whitney form (ties count one half), as roc_auc_score but fast enough for resampling
    ranks = rankdata(scores)
    return float(
        (ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    )


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Balanced accuracy of ``scores >= 0.5``."""
    labels = np.asarray(labels)
    predicted = np.asarray(scores) >= 0.5
    recalls = [np.mean(predicted[labels == c] == bool(c)) for c in np.unique(labels)]
    return float(np.mean(recalls))


def bootstrap_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float]:
    """``[estimate, low, high]``: percentile bootstrap over subjects.

    Resamples with a single class are redrawn (they have no AUROC).
    """
    estimate = metric(labels, scores)
    rng = np.random.default_rng(seed)
    values = []
    attempts = 0
    while len(values) < n_boot and attempts < 20 * n_boot:
        attempts += 1
        sample = rng.integers(0, len(labels), len(labels))
        if np.unique(labels[sample]).size < 2:
            continue
        values.append(metric(labels[sample], scores[sample]))
    if not values:
        return [estimate, float("nan"), float("nan")]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(estimate), float(low), float(high)]


def paired_permutation_test(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    *,
    n_permutations: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Two-sided paired permutation test of the AUROC difference ``a - b``.

    Under the null the two inputs are exchangeable per subject, so each permutation swaps the
    two scores of every subject with probability 1/2. The scores are replaced by their ranks
    within each input first (AUROC depends on ranks only): swapping raw probabilities of two
    classifiers whose probabilities span different ranges would make the test depend on
    calibration rather than on discrimination.

    Returns
    -------
    result : dict
        ``difference_roc_auc`` and ``p_value`` = ``(1 + #{|d_perm| >= |d|}) / (1 + n)``.
    """
    scores_a = rankdata(scores_a) / len(labels)
    scores_b = rankdata(scores_b) / len(labels)
    observed = auroc(labels, scores_a) - auroc(labels, scores_b)
    rng = np.random.default_rng(seed)
    swap = rng.random((n_permutations, len(labels))) < 0.5
    exceed = 0
    for row in swap:
        a = np.where(row, scores_b, scores_a)
        b = np.where(row, scores_a, scores_b)
        if abs(auroc(labels, a) - auroc(labels, b)) >= abs(observed) - 1e-12:
            exceed += 1
    return {
        "difference_roc_auc": float(observed),
        "p_value": float((1 + exceed) / (1 + n_permutations)),
        "n_permutations": int(n_permutations),
    }


def compare_features(
    model_features: np.ndarray,
    raw_signals: np.ndarray,
    sfreq: float,
    labels: np.ndarray,
    subjects: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    n_folds: int = 4,
    seed: int = 0,
    n_boot: int = 2000,
    n_permutations: int = 5000,
) -> dict:
    """Run both classifiers on both inputs with subject-level folds.

    Parameters
    ----------
    model_features : np.ndarray, shape (N, D)
    raw_signals : np.ndarray, shape (N, S, T)
    sfreq : float
        Hz.
    labels : np.ndarray of int (0/1), shape (N,)
    subjects : np.ndarray of str, shape (N,)
    valid : np.ndarray of bool, shape (N, S), optional
        Valid sensors of every window (band powers of the others are imputed in-fold).
    n_folds, seed, n_boot, n_permutations
        Cross-validation folds, seed, bootstrap resamples, permutations.

    Returns
    -------
    section : dict
        The ``classification`` section of ``metrics.json``, plus ``subject_probabilities``
        (per input and classifier, for the figures).
    """
    folds = subject_folds(subjects, labels, n_folds, seed)
    raw, n_band = raw_features(raw_signals, sfreq, valid)
    inputs = {
        "features": (model_features, lambda model, n: make_pipeline(StandardScaler(), model)),
        "raw": (
            raw,
            lambda model, n: Pipeline(
                [("features", raw_preprocessing(n_band, raw.shape[1], n)), ("model", model)]
            ),
        ),
    }
    section: dict = {
        "n_subjects": int(np.unique(subjects).size),
        "folds": len(folds),
        "n_windows": int(len(labels)),
    }
    probabilities: dict[str, dict[str, list[float]]] = {}
    subject_labels = None
    for source, (values, build) in inputs.items():
        section[source] = {}
        probabilities[source] = {}
        for name, estimator in classifiers(seed).items():
            ids, subject_labels, prob = subject_probabilities(
                values,
                labels,
                subjects,
                folds,
                lambda n, estimator=estimator, build=build: build(clone(estimator), n),
            )
            section[source][name] = {
                "roc_auc": bootstrap_ci(subject_labels, prob, auroc, n_boot=n_boot, seed=seed),
                "balanced_accuracy": bootstrap_ci(
                    subject_labels, prob, balanced_accuracy, n_boot=n_boot, seed=seed
                ),
            }
            probabilities[source][name] = prob.tolist()
    section["permutation_test"] = {
        name: paired_permutation_test(
            subject_labels,
            np.asarray(probabilities["features"][name]),
            np.asarray(probabilities["raw"][name]),
            n_permutations=n_permutations,
            seed=seed,
        )
        for name in classifiers(seed)
    }
    section["subject_labels"] = subject_labels.tolist()
    section["subject_probabilities"] = probabilities
    return section


def auroc_within(section: dict, members: np.ndarray) -> dict[str, dict[str, float]]:
    """AUROC of a comparison's out-of-fold subject probabilities over some of its subjects.

    Parameters
    ----------
    section : dict
        What :func:`compare_features` returns (subjects in sorted order).
    members : np.ndarray of bool, shape (n_subjects,)
        The subjects to score, in the same order.

    Returns
    -------
    roc_auc : dict
        ``{input: {classifier: AUROC}}``; NaN when the subjects hold a single class.
    """
    labels = np.asarray(section["subject_labels"])[members]
    return {
        source: {
            name: auroc(labels, np.asarray(probabilities)[members])
            for name, probabilities in per_classifier.items()
        }
        for source, per_classifier in section["subject_probabilities"].items()
    }


__all__ = [
    "BANDS",
    "auroc",
    "auroc_within",
    "balanced_accuracy",
    "band_power_features",
    "bootstrap_ci",
    "classifiers",
    "compare_features",
    "paired_permutation_test",
    "raw_features",
    "subject_folds",
    "subject_probabilities",
]
