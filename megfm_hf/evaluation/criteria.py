"""When a claim counts as supported: one rule for the report, the demo's table and the card.

* Reconstruction: the model's NMSE is below the baseline's (spatial interpolation) on the
  same hidden sensors.
* Attention: the spin-test p-value of a condition, Holm-corrected for the number of conditions
  tested, is below :data:`ALPHA`.
* Classification: the features' subject-level AUROC exceeds the raw signal's and the paired
  permutation test of the difference gives p below :data:`ALPHA`.
"""

from __future__ import annotations

from collections.abc import Mapping

#: significance level of every test
ALPHA = 0.05


def reconstruction_holds(model_nmse: float | None, baseline_nmse: float | None) -> bool:
    """The model reconstructs with a smaller NMSE than the baseline."""
    return model_nmse is not None and baseline_nmse is not None and model_nmse < baseline_nmse


def attention_holds(values: Mapping) -> bool:
    """A condition's attention lies on its expected sensors beyond the null (corrected)."""
    return values.get("p_value_holm", values["p_value"]) < ALPHA


def classification_holds(test: Mapping) -> bool:
    """Features beat raw MEG: a positive AUROC difference with permutation p < ALPHA."""
    return test["difference_roc_auc"] > 0 and test["p_value"] < ALPHA


__all__ = ["ALPHA", "attention_holds", "classification_holds", "reconstruction_holds"]
