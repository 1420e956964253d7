"""Subject-level evaluation of window classifiers.

Windows of one subject are not independent samples, so window predictions are averaged into
one probability per subject and every metric is computed over subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score


@dataclass(frozen=True)
class SubjectPredictions:
    """One prediction per subject."""

    subjects: np.ndarray  # (n_subjects,) str
    probabilities: np.ndarray  # (n_subjects, n_classes), mean of window probabilities
    labels: np.ndarray  # (n_subjects,) int
    n_windows: np.ndarray  # (n_subjects,) int


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def aggregate_by_subject(
    subjects: Sequence[str], probabilities: np.ndarray, labels: Sequence[int]
) -> SubjectPredictions:
    """Average window probabilities per subject.

    Parameters
    ----------
    subjects : sequence of str
        Subject of each window.
    probabilities : ndarray, shape (n_windows, n_classes)
        Class probabilities of each window.
    labels : sequence of int
        Label of each window; all windows of a subject must share it.
    """
    subjects = np.asarray(subjects).astype(str)
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    if not len(subjects) == len(labels) == len(probabilities):
        raise ValueError(
            f"got {len(subjects)} subjects, {len(labels)} labels and {len(probabilities)} "
            "probability rows; expected one of each per window."
        )
    unique = np.unique(subjects)
    mean_probabilities, subject_labels, counts = [], [], []
    for subject in unique:
        rows = subjects == subject
        values = np.unique(labels[rows])
        if len(values) != 1:
            raise ValueError(f"subject {subject} has windows with labels {values.tolist()}.")
        mean_probabilities.append(probabilities[rows].mean(axis=0))
        subject_labels.append(values[0])
        counts.append(int(rows.sum()))
    return SubjectPredictions(
        unique, np.array(mean_probabilities), np.array(subject_labels), np.array(counts)
    )


def subject_metrics(predictions: SubjectPredictions, positive_label: int = 1) -> dict[str, float]:
    """Balanced accuracy, AUROC, F1, sensitivity and specificity over subjects.

    For two classes, ``positive_label`` is the patient class (sensitivity is its recall).
    AUROC is one-vs-rest macro for more classes, and NaN when a class has no subject.
    """
    labels = predictions.labels
    probabilities = predictions.probabilities
    predicted = probabilities.argmax(axis=1)
    result = {
        "n_subjects": float(len(labels)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "f1": float(
            f1_score(
                labels,
                predicted,
                average="binary" if probabilities.shape[1] == 2 else "macro",
                pos_label=positive_label,
                zero_division=0,
            )
        ),
    }
    try:
        if probabilities.shape[1] == 2:
            result["roc_auc"] = float(
                roc_auc_score(labels == positive_label, probabilities[:, positive_label])
            )
        else:
            result["roc_auc"] = float(roc_auc_score(labels, probabilities, multi_class="ovr"))
    except ValueError:
        result["roc_auc"] = float("nan")
    if probabilities.shape[1] == 2:
        positive = labels == positive_label
        result["sensitivity"] = (
            float((predicted[positive] == positive_label).mean())
            if positive.any()
            else float("nan")
        )
        result["specificity"] = (
            float((predicted[~positive] != positive_label).mean())
            if (~positive).any()
            else float("nan")
        )
    return result
