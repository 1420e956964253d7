"""``report.md``: the summary table of the three claims, then the figures and the methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import attention, classification, reconstruction
from .criteria import attention_holds, classification_holds, reconstruction_holds

REPORT_FILE = "report.md"


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _mean_nmse(per_condition: Mapping) -> float | None:
    values = [
        v["nmse"]
        for per_type in per_condition.values()
        for v in per_type.values()
        if v.get("nmse") is not None
    ]
    return float(np.mean(values)) if values else None


def _reconstruction_claim(metrics: Mapping) -> list[str]:
    section = metrics.get("reconstruction")
    if not section:
        return [
            "masked MEG reconstruction",
            "n/a",
            "n/a",
            f"skipped: {metrics['skipped'].get('reconstruction', '')}",
        ]
    model = _mean_nmse(section.get("evoked", {}))
    baselines = {
        name: _mean_nmse(values) for name, values in section.get("evoked_baselines", {}).items()
    }
    interpolation = baselines.get("interpolation")
    best_name = min(
        (n for n in baselines if baselines[n] is not None and n != "zeros"),
        key=lambda n: baselines[n],
        default=None,
    )
    if model is None or interpolation is None:
        verdict = "evoked comparison not available"
    elif reconstruction_holds(model, interpolation):
        verdict = "supported: the model beats spatial interpolation on evoked responses"
        if best_name and baselines[best_name] < model:
            verdict += f" (the {best_name} baseline is better still)"
    else:
        verdict = "not supported: spatial interpolation reconstructs evoked responses better"
    continuous = section.get("continuous", {})
    interpolated = section.get("baselines", {}).get("interpolation", {})
    if continuous and interpolated:
        won = [
            t
            for t, v in continuous.items()
            if reconstruction_holds(v.get("nmse"), interpolated.get(t, {}).get("nmse"))
        ]
        verdict += (
            f"; continuous MEG: better than interpolation for {len(won)} of {len(continuous)} "
            "sensor types"
        )
    baseline_text = ", ".join(f"{n} {_f(v)}" for n, v in baselines.items())
    return ["masked MEG reconstruction (evoked NMSE)", _f(model), baseline_text, verdict]


def _patch(interval: Sequence[float] | None) -> str:
    """A patch's interval in seconds from the event, or "all" for maps over every patch."""
    if interval is None:
        return "all"
    return f"{interval[0]:+.2f} to {interval[1]:+.2f} s"


def _attention_claim(metrics: Mapping) -> list[str]:
    section = metrics.get("attention")
    if not section:
        reason = metrics["skipped"].get("attention") or metrics["skipped"].get(
            "attention_alignment", ""
        )
        return ["attention peaks at the driven sensors", "n/a", "n/a", f"skipped: {reason}"]
    evoked = {c: v for c, v in section.items() if c != "rest"} or section
    significant = [c for c, v in evoked.items() if attention_holds(v)]
    model = np.mean([v["alignment"] for v in evoked.values()])
    null = np.mean([v["null_mean"] for v in evoked.values()])
    kinds = sorted({v.get("null", "shuffled") for v in evoked.values()})
    verdict = (
        f"supported in {len(significant)} of {len(evoked)} conditions (Holm-corrected p < 0.05)"
        if significant
        else "not supported: no condition beats the null (Holm-corrected p < 0.05)"
    )
    return [
        "attention rises at the driven sensors (stimulus-induced attention on expected sensors)",
        _f(model),
        f"{'/'.join(kinds)} null {_f(null)}",
        verdict,
    ]


def _classification_claim(metrics: Mapping, key: str = "classification") -> list[str]:
    section = metrics.get(key)
    scope = " (held-out subjects only)" if key != "classification" else ""
    if not section:
        reason = metrics["skipped"].get(key, "")
        return [f"features beat raw MEG (AUROC){scope}", "n/a", "n/a", f"skipped: {reason}"]
    name = "logistic_regression"
    model = section["features"][name]["roc_auc"]
    raw = section["raw"][name]["roc_auc"]
    test = section["permutation_test"][name]
    if classification_holds(test):
        verdict = f"supported (p = {test['p_value']:.3g})"
    elif test["difference_roc_auc"] > 0:
        verdict = f"higher but not significant (p = {test['p_value']:.3g})"
    else:
        verdict = f"not supported (p = {test['p_value']:.3g})"
    pooled = "" if metrics.get("pooling", "mean") == "mean" else f", pooled: {metrics['pooling']}"
    return [
        f"pretrained features beat raw-signal features (AUROC, logistic regression{pooled})"
        + scope,
        f"{_f(model[0])} [{_f(model[1])}, {_f(model[2])}]",
        f"raw {_f(raw[0])} [{_f(raw[1])}, {_f(raw[2])}]",
        verdict,
    ]


def _held_out_status(metrics: Mapping) -> str:
    """Whether the evaluated subjects were held out of pretraining, as far as is known."""
    seen = metrics.get("test_subjects_in_pretraining")
    if seen is None:
        return "unknown whether the model was pretrained on them: no split.json"
    if seen:
        return f"{len(seen)} of them in pretraining, so not held out: {', '.join(seen)}"
    return "all held out of pretraining"


def _classification_tables(section: Mapping) -> list[str]:
    """AUROC and balanced accuracy per input and classifier, then the permutation tests."""
    rows = []
    for source, label in (("features", "pretrained features"), ("raw", "raw-signal")):
        for name, values in section[source].items():
            auc, bacc = values["roc_auc"], values["balanced_accuracy"]
            rows.append(
                [
                    label,
                    name,
                    f"{_f(auc[0])} [{_f(auc[1])}, {_f(auc[2])}]",
                    f"{_f(bacc[0])} [{_f(bacc[1])}, {_f(bacc[2])}]",
                ]
            )
    seen = section.get("n_pretraining_subjects")
    pretraining = (
        "" if seen is None else f" ({seen} of them in the model's pretraining, without labels)"
    )
    lines = [
        f"{section['n_subjects']} subjects{pretraining}, {section['folds']} subject-level folds, "
        f"{section['n_windows']} windows; positive class `{section['positive_label']}`.",
        "",
    ]
    lines += _table(["input", "classifier", "AUROC [95% CI]", "balanced accuracy"], rows)
    lines += ["", "Paired permutation test of the AUROC difference (features - raw):", ""]
    lines += _table(
        ["classifier", "difference", "p"],
        [
            [n, _f(v["difference_roc_auc"]), f"{v['p_value']:.3g}"]
            for n, v in section["permutation_test"].items()
        ],
    )
    groups = section.get("roc_auc_by_pretraining")
    if groups:
        columns = [(s, n) for s in ("features", "raw") for n in section[s]]
        lines += [
            "",
            "The same out-of-fold subject probabilities, scored on the subjects the model was "
            "pretrained on and on those it was not (AUROC); a lead of the features that holds "
            "only on the former comes from pretraining on those subjects' signals:",
            "",
        ]
        lines += _table(
            ["subjects", "n"] + [f"{s} {n}" for s, n in columns],
            [
                [group.replace("_", "-"), values["n_subjects"]]
                + [_f(values[s][n]) for s, n in columns]
                for group, values in groups.items()
            ],
        )
    return lines + [""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _docstring_section(module: Any, title: str) -> str:
    text = module.__doc__ or ""
    marker = f"{title}\n{'-' * len(title)}\n"
    return text.split(marker, 1)[1].strip() if marker in text else ""


def _figure(metrics: Mapping, key: str, caption: str) -> list[str]:
    name = metrics.get("figures", {}).get(key)
    return [f"![{caption}]({name})", ""] if name else []


def write_report(metrics: Mapping, output_dir: str | Path, *, mask_folds: int, tmin: float) -> Path:
    """Write ``report.md`` next to ``metrics.json`` and the figures.

    Parameters
    ----------
    metrics : Mapping
        What :func:`~.evaluate.evaluate_model` returns.
    output_dir : str | Path
    mask_folds : int
        Sensor groups hidden in turn (for the methods text).
    tmin : float
        Start of event-locked windows relative to the event, s.

    Returns
    -------
    path : Path
    """
    lines = [
        "# megfm evaluation report",
        "",
        f"Model `{metrics['model']}`, dataset `{metrics['dataset']}`, evaluated subjects "
        f"{', '.join(metrics['test_subjects'])} ({_held_out_status(metrics)}; "
        f"{metrics['n_test_windows']} windows, at most "
        f"{metrics['max_windows']} per subject and condition), seed {metrics['seed']}, "
        f"{metrics['runtime_s']:.0f} s.",
        "",
        "## Summary",
        "",
    ]
    lines += _table(
        ["claim", "model", "baseline / null", "verdict"],
        [_reconstruction_claim(metrics), _attention_claim(metrics), _classification_claim(metrics)]
        + (
            [_classification_claim(metrics, "classification_held_out")]
            if "classification_held_out" in metrics
            else []
        ),
    )
    if metrics.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in metrics["skipped"].items())]

    lines += ["", "## 1. Reconstruction of masked continuous and evoked MEG", ""]
    section = metrics.get("reconstruction")
    if section:
        rows = []
        for sensor_type, values in section.get("continuous", {}).items():
            baseline = [
                _f(section["baselines"].get(n, {}).get(sensor_type, {}).get("nmse"))
                for n in section["baselines"]
            ]
            rows.append(
                ["continuous (rest)", sensor_type, _f(values["nmse"]), _f(values["pearson_r"])]
                + baseline
            )
        names = list(section.get("evoked_baselines", {}))
        for condition, per_type in section.get("evoked", {}).items():
            for sensor_type, values in per_type.items():
                baseline = [
                    _f(
                        section["evoked_baselines"][n]
                        .get(condition, {})
                        .get(sensor_type, {})
                        .get("nmse")
                    )
                    for n in names
                ]
                rows.append(
                    [
                        f"evoked {condition}",
                        sensor_type,
                        _f(values["nmse"]),
                        _f(values["pearson_r"]),
                    ]
                    + baseline
                )
        header = ["scope", "sensor type", "model NMSE", "model r"] + [f"{n} NMSE" for n in names]
        lines += _table(header, rows) + [""]
        lines += _figure(metrics, "reconstruction_summary", "NMSE of the model and baselines")
        lines += _figure(metrics, "evoked_traces", "true vs reconstructed evoked traces")
        lines += _figure(metrics, "butterfly", "butterfly plots")
        lines += [
            "**Method.** "
            + _docstring_section(reconstruction, "Protocol").replace("\n", " ")
            + f" Here {mask_folds} sensor groups are used ({100 / mask_folds:.0f}% of the sensors "
            "hidden per pass) and event-locked windows start at "
            f"{tmin:g} s. NMSE = sum of squared error / sum of squared target (zeros score 1); "
            "Pearson r over all scored samples of a sensor type. Baselines predict the same "
            "hidden sensors: *zeros*; *interpolation*, a Gaussian-kernel average (width = median "
            "sensor spacing) of visible sensors of the same type at the same time sample, "
            "weighted by orientation agreement; *ridge*, a ridge regression from all visible "
            "sensors to the hidden ones at the same sample, fitted on windows of the training "
            "subjects (penalty by generalised cross-validation).",
            "",
        ]
    else:
        lines += [f"Skipped: {metrics['skipped'].get('reconstruction', '')}", ""]

    lines += ["## 2. Attention over the sensor array", ""]
    if metrics.get("attention"):
        rows = [
            [
                condition,
                _f(v["alignment"]),
                _f(v["null_mean"]),
                f"[{_f(v['null_ci95'][0])}, {_f(v['null_ci95'][1])}]",
                v.get("null", "shuffled"),
                f"{v['p_value']:.3g}",
                f"{v.get('p_value_holm', v['p_value']):.3g}",
                v["n_region_sensors"],
                _patch(v.get("peak_patch_s")),
            ]
            for condition, v in metrics["attention"].items()
        ]
        lines += _table(
            ["condition", "alignment", "null mean", "null 95%", "null", "p", "p (Holm)",
             "expected sensors", "patch"],
            rows,
        )  # fmt: skip
        lines += [""]
    lines += _figure(metrics, "attention_topomaps", "attention topomaps per condition")
    lines += _figure(metrics, "attention_alignment", "alignment vs null")
    lines += [
        "**Method.** "
        + _docstring_section(attention, "Method").replace("\n", " ")
        + " In the topomaps, positions are projected to the plane (azimuthal equidistant "
        "projection about the sensor sphere), the two planar gradiometers of a site are summed, "
        "and circles mark the expected sensors.",
        "",
    ]
    if "attention_alignment" in metrics.get("skipped", {}):
        lines += [f"Alignment skipped: {metrics['skipped']['attention_alignment']}", ""]

    lines += ["## 3. Pretrained features vs raw MEG", ""]
    section = metrics.get("classification")
    if section:
        lines += ["### All labelled subjects", ""] + _classification_tables(section)
        lines += _figure(metrics, "classification", "AUROC features vs raw")
        lines += ["### Subjects held out of pretraining", ""]
        if "classification_held_out" in metrics:
            lines += _classification_tables(metrics["classification_held_out"])
        else:
            lines += [f"Skipped: {metrics['skipped'].get('classification_held_out', '')}", ""]
        lines += [
            "**Method.** "
            + _docstring_section(classification, "Method").replace("\n", " ")
            + " As in the reference model's protocol, every labelled subject is classified: "
            "self-supervised pretraining never sees labels, but it may have seen these subjects' "
            "signals, which a raw-signal classifier has no equivalent of. The held-out analysis "
            "repeats the comparison on the subjects the model was not pretrained on.",
            "",
        ]
    else:
        lines += [f"Skipped: {metrics['skipped'].get('classification', '')}", ""]
    path = Path(output_dir) / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["REPORT_FILE", "write_report"]
