"""Evaluation of a pretrained model: the three claims of the project, with figures and a report.

1. masked continuous and evoked MEG are reconstructed (against zeros, spatial interpolation and
   ridge regression baselines);
2. attention over the sensor array peaks where the stimulus drives cortex (against a
   shuffled-sensor null);
3. pretrained features classify subjects better than raw-signal features (subject-level folds,
   bootstrap intervals, paired permutation test).

Start with :func:`evaluate_model` or ``megfm evaluate``.
"""

from .attention import alignment_score, condition_map, shuffled_null
from .baselines import RidgeBaseline, interpolate_hidden, interpolation_weights
from .classification import (
    band_power_features,
    bootstrap_ci,
    compare_features,
    paired_permutation_test,
    subject_folds,
)
from .evaluate import METRICS_FILE, evaluate_model
from .features import InferenceResult, WindowArrays, load_windows, run_inference
from .loading import check_compatibility, load_evaluation_data, load_model, select_subjects
from .masking import sensor_folds
from .reconstruction import evoked_averages, evoked_scores, nmse, pearson_r, scores_by_type
from .report import REPORT_FILE, write_report

__all__ = [
    "InferenceResult",
    "METRICS_FILE",
    "REPORT_FILE",
    "RidgeBaseline",
    "WindowArrays",
    "alignment_score",
    "band_power_features",
    "bootstrap_ci",
    "check_compatibility",
    "compare_features",
    "condition_map",
    "evaluate_model",
    "evoked_averages",
    "evoked_scores",
    "interpolate_hidden",
    "interpolation_weights",
    "load_evaluation_data",
    "load_model",
    "load_windows",
    "nmse",
    "paired_permutation_test",
    "pearson_r",
    "run_inference",
    "scores_by_type",
    "select_subjects",
    "sensor_folds",
    "shuffled_null",
    "subject_folds",
    "write_report",
]
