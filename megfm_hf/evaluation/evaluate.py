"""``evaluate_model``: reconstruction, attention maps and classification, with figures and report."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling.configuration_megfm import SENSOR_TYPES
from . import attention as attn
from . import plots
from .baselines import RidgeBaseline, interpolate_hidden
from .classification import auroc_within, compare_features
from .features import load_windows, run_inference
from .loading import (
    EvaluationData,
    check_compatibility,
    load_evaluation_data,
    load_model,
    pretraining_subjects,
    select_subjects,
)
from .masking import layout_key, sensor_folds
from .reconstruction import evoked_averages, evoked_scores, scores_by_type
from .report import write_report

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REST = "rest"
#: ground-truth condition describing the rest windows
REST_TRUTH = "rest/alpha"
#: strongest sensors drawn per condition in the evoked-trace figure
N_TRACE_SENSORS = 3


def _conditions(data: EvaluationData) -> np.ndarray:
    """Condition of every row: its event name, or ``rest`` for fixed-length windows."""
    return np.where(data.events == "", REST, data.events)


def _cap(
    indices: np.ndarray, keys: np.ndarray, max_windows: int | None, rng: np.random.Generator
) -> np.ndarray:
    """At most ``max_windows`` rows per key (subject x condition), drawn at random."""
    if max_windows is None:
        return np.sort(indices)
    kept = []
    for key in np.unique(keys[indices]):
        rows = indices[keys[indices] == key]
        if rows.size > max_windows:
            rows = rng.choice(rows, max_windows, replace=False)
        kept.append(rows)
    return np.sort(np.concatenate(kept)) if kept else np.array([], dtype=np.int64)


def _layouts(data: EvaluationData) -> np.ndarray:
    positions = data.dataset["sensor_positions"]
    types = data.dataset["sensor_types"]
    return np.array([layout_key(p, t) for p, t in zip(positions, types, strict=True)])


def _strongest_count(region: str | Sequence[str | int] | None) -> int | None:
    """Sensors per type of ``region="strongest[:K]"`` (10 by default); None for other regions."""
    if not isinstance(region, str) or not region.strip().lower().startswith("strongest"):
        return None
    _, _, count = region.strip().partition(":")
    try:
        value = int(count) if count else 10
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"region {region!r}: expected 'strongest' or 'strongest:K' with K >= 1")
    return value


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and Inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _too_few_per_class(data: EvaluationData, rows: np.ndarray) -> str | None:
    """Why the rows cannot be cross-validated by subject (fewer than 2 subjects in a class)."""
    per_class = {
        name: len(set(data.subjects[rows][data.labels[rows] == name])) for name in data.label_names
    }
    if min(per_class.values()) < 2:
        return f"too few subjects per class for subject-level folds: {per_class}"
    return None


def _sensor_names(
    ground_truth: str | Path | None, positions: np.ndarray
) -> tuple[list[str | None] | None, str | None]:
    """Channel names of the dataset sensors, read from the cohort next to the ground truth."""
    if ground_truth is None:
        return None, None
    root = Path(ground_truth).resolve().parent.parent
    try:
        recording = attn.find_recording(root)
    except FileNotFoundError as err:
        return None, str(err)
    names, named_positions = attn.channel_names_from_recording(recording)
    matched = attn.match_channel_names(positions, names, named_positions)
    if all(name is None for name in matched):
        return None, f"no dataset sensor matches a channel of {recording.name} by position"
    return matched, None


def evaluate_model(
    model_dir: str | Path,
    dataset_dir: str | Path,
    output_dir: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    ground_truth: str | Path | None = None,
    region: str | Sequence[str | int] | None = None,
    max_windows: int | None = 40,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 16,
    mask_folds: int = 4,
    cv_folds: int = 4,
    n_permutations: int = 2000,
    n_bootstrap: int = 2000,
    progress: bool = True,
    pooling: str | None = None,
) -> dict[str, Any]:
    """Evaluate a pretrained model on a dataset: the three claims, with figures and a report.

    Parameters
    ----------
    model_dir : str | Path
        ``save_pretrained`` folder (``config.json``, ``model.safetensors``; ``split.json``
        names the held-out subjects).
    dataset_dir : str | Path
        Dataset folder of :func:`megfm_hf.data.build_dataset` at the model's sampling rate and
        patch length.
    output_dir : str | Path
        Receives ``report.md``, ``metrics.json`` and the PNG figures.
    subjects : sequence of str, optional
        Held-out subjects to evaluate (default: ``split.json``'s ``test``, else all).
    ground_truth : str | Path, optional
        ``derivatives/ground_truth.json`` of a simulated cohort: expected attention regions;
        channel names are read from a recording of the same BIDS folder.
    region : str | sequence, optional
        For data without ground truth: expected sensors (indices or channel names) for every
        condition, or ``"strongest"`` / ``"strongest:K"`` for the K (default 10) sensors of each
        type where each condition's evoked field is strongest at its peak patch (read from the
        held-out input windows, never from the model). Without a region or ground truth the
        alignment test is skipped.
    max_windows : int, optional
        Cap on windows per subject and condition (None: all).
    seed : int
        Seed of window sampling, sensor masks, folds, bootstrap and permutations.
    device : str
        Torch device for inference.
    batch_size : int
        Windows per forward pass.
    mask_folds : int
        Sensor groups hidden in turn (``1 / mask_folds`` of the sensors hidden per pass).
    cv_folds : int
        Subject-level cross-validation folds of the classification.
    n_permutations, n_bootstrap : int
        Resamples of the null distributions and confidence intervals.
    progress : bool
        Show progress bars.
    pooling : str, optional
        How the classification's features summarise a window, overriding the model's
        ``config.pooling`` (``"latents"`` pools the final latents of a latent-mode model).

    Returns
    -------
    metrics : dict
        The content of ``metrics.json`` (schema: ``reconstruction``, ``attention``,
        ``classification``, ``skipped``).

    Raises
    ------
    FileNotFoundError
        Missing model files or dataset folder.
    ValueError
        A dataset the model cannot take (sampling rate, window length), or unknown subjects.
    """
    start = time.perf_counter()
    region_top_k = _strongest_count(region)  # a malformed region fails before any work
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = load_model(model_dir, device, pooling)
    data = load_evaluation_data(dataset_dir)
    check_compatibility(model, data, model_dir)
    test_subjects, train_subjects = select_subjects(data, model_dir, subjects)
    pretrained_on = pretraining_subjects(model_dir)
    seen = sorted(set(test_subjects) & set(pretrained_on or ()))
    if seen:
        logger.warning(
            "%d of the %d evaluated subjects were in the model's pretraining (%s of %s): their "
            "results are not held out",
            len(seen),
            len(test_subjects),
            "split.json",
            model_dir,
        )
    rng = np.random.default_rng(seed)
    conditions = _conditions(data)
    keys = np.char.add(np.char.add(data.subjects.astype(str), "|"), conditions.astype(str))
    layouts = _layouts(data)

    test_rows = np.flatnonzero(np.isin(data.subjects, test_subjects))
    layout = layouts[test_rows[0]]
    if np.any(layouts[test_rows] != layout):
        logger.warning("held-out windows use several sensor arrays; evaluating the first only")
    test_rows = _cap(test_rows[layouts[test_rows] == layout], keys, max_windows, rng)
    windows = load_windows(data, test_rows)
    folds = sensor_folds(windows.types, None, mask_folds, seed)
    skipped: dict[str, str] = {}
    reconstruct = getattr(model, "decoder_loaded", True) and not model.config.norm_patch_loss
    if not reconstruct:
        skipped["reconstruction"] = (
            "the model has no reconstruction decoder"
            if not getattr(model, "decoder_loaded", True)
            else "the model reconstructs per-patch normalised signals (norm_patch_loss)"
        )
    inference = run_inference(
        model,
        windows,
        folds=folds if reconstruct else None,
        batch_size=batch_size,
        progress=progress,
        description="held-out windows",
    )
    sfreq = data.sfreq
    window_conditions = conditions[windows.indices]
    window_subjects = data.subjects[windows.indices]
    names, names_problem = _sensor_names(ground_truth, windows.positions)
    valid_any = windows.valid.any(axis=0)
    metrics: dict[str, Any] = {
        "model": str(model_dir),
        "dataset": str(dataset_dir),
        "test_subjects": test_subjects,
        # None when unknown (no split.json): which evaluated subjects were pretrained on
        "test_subjects_in_pretraining": None if pretrained_on is None else seen,
        "n_test_windows": int(len(windows.indices)),
        "seed": seed,
        "max_windows": max_windows,
        "pooling": model.config.pooling,
    }
    figures: dict[str, str] = {}

    # ---------------------------------------------------------------- claim 1: reconstruction
    evoked_traces: dict[str, dict[str, np.ndarray]] = {}
    if reconstruct:
        predictions = {
            "model": inference.reconstruction,
            "zeros": np.zeros_like(windows.signals),
            "interpolation": interpolate_hidden(
                windows.signals, windows.valid, windows.positions, windows.types, folds
            ),
        }
        train_rows = np.flatnonzero(np.isin(data.subjects, train_subjects) & (layouts == layout))
        if train_rows.size:
            train_rows = _cap(train_rows, keys, max_windows, rng)
            ridge = RidgeBaseline(folds, seed=seed).fit(load_windows(data, train_rows).signals)
            predictions["ridge"] = ridge.predict(windows.signals)
        else:
            skipped["ridge_baseline"] = "no training subjects with the held-out sensor array"
        patch = model.config.patch_length
        section: dict[str, Any] = {
            "protocol": (
                f"whole sensors hidden, {mask_folds} seeded sensor groups in turn "
                f"(seed {seed}); evoked = per-subject average over epochs"
            ),
            "baselines": {},
            "evoked": {},
            "evoked_baselines": {name: {} for name in predictions if name != "model"},
        }
        rest = window_conditions == REST
        if rest.any():
            for name, predicted in predictions.items():
                scores = scores_by_type(
                    windows.signals[rest],
                    predicted[rest],
                    windows.types,
                    windows.valid[rest],
                    patch,
                )
                if name == "model":
                    section["continuous"] = scores
                else:
                    section["baselines"][name] = scores
        else:
            skipped["reconstruction_continuous"] = "no rest (fixed-length) windows"
        for condition in sorted(set(window_conditions) - {REST}):
            chosen = window_conditions == condition
            true_avg = evoked_averages(
                windows.signals[chosen], windows.valid[chosen], window_subjects[chosen]
            )
            evoked_traces[condition] = {"true": np.mean([v[0] for v in true_avg.values()], 0)}
            for name, predicted in predictions.items():
                avg = evoked_averages(
                    predicted[chosen], windows.valid[chosen], window_subjects[chosen]
                )
                scores = evoked_scores(true_avg, avg, windows.types, patch)
                if name == "model":
                    section["evoked"][condition] = scores
                else:
                    section["evoked_baselines"][name][condition] = scores
                evoked_traces[condition][name] = np.mean([v[0] for v in avg.values()], 0)
        metrics["reconstruction"] = section
        figures["reconstruction_summary"] = plots.plot_reconstruction_summary(
            section, output / "reconstruction_nmse.png"
        ).name
        if evoked_traces:
            times = data.tmin + np.arange(windows.signals.shape[-1]) / sfreq
            post = times >= 0
            strongest, labels = {}, {}
            for condition, traces in evoked_traces.items():
                power = np.sqrt((traces["true"][:, post] ** 2).mean(axis=1)) * valid_any
                # the strongest per type, relative to the type's median, so types with
                # different units are compared fairly
                relative = np.zeros_like(power)
                for code in np.unique(windows.types):
                    members = windows.types == code
                    relative[members] = power[members] / max(np.median(power[members]), 1e-12)
                strongest[condition] = np.argsort(-relative)[:N_TRACE_SENSORS].tolist()
                labels[condition] = [
                    (names[s] if names and names[s] else f"sensor {s}")
                    + f" ({SENSOR_TYPES[windows.types[s]]})"
                    for s in strongest[condition]
                ]
            figures["evoked_traces"] = plots.plot_evoked_traces(
                times, evoked_traces, strongest, labels, output / "evoked_traces.png"
            ).name
            butterfly = {
                c: {"true": t["true"], "model": t["model"]} for c, t in evoked_traces.items()
            }
            figures["butterfly"] = plots.plot_butterfly(
                times, butterfly, windows.types, valid_any, output / "evoked_butterfly.png"
            ).name
        else:
            skipped["reconstruction_evoked"] = "no event-locked windows among the held-out data"

    # ---------------------------------------------------------------- claim 2: attention
    if inference.attention is None:
        skipped["attention"] = (
            f"attention_mode={model.config.attention_mode!r} gives no attention over sensors"
        )
    else:
        num_patches = inference.attention.shape[1]
        patch_duration = model.config.patch_duration
        candidates = attn.post_stimulus_patches(num_patches, patch_duration, data.tmin)
        baseline = attn.baseline_patches(num_patches, patch_duration, data.tmin)
        maps = {}
        peaks: dict[str, int] = {}
        for condition in sorted(set(window_conditions), key=lambda c: (c == REST, c)):
            rows = window_conditions == condition
            chosen = inference.attention[rows]
            if condition == REST:
                maps[condition] = attn.condition_map(chosen, np.ones(num_patches, bool))
                continue
            peak = attn.evoked_peak_patch(
                windows.signals[rows],
                windows.types,
                windows.valid[rows],
                model.config.patch_length,
                candidates,
                baseline,
            )
            peaks[condition] = peak
            post = np.arange(num_patches) == peak
            if baseline.any():
                maps[condition] = attn.induced_map(chosen, post, baseline)
            else:
                maps[condition] = attn.condition_map(chosen, post)
        regions: dict[str, np.ndarray] = {}
        if region_top_k is not None:
            region_source = f"strongest evoked field at the peak patch ({region_top_k} per type)"
            regions = {
                c: attn.strongest_sensors(
                    windows.signals[window_conditions == c],
                    windows.types,
                    windows.valid[window_conditions == c],
                    model.config.patch_length,
                    peak,
                    baseline,
                    top_k=region_top_k,
                )
                for c, peak in peaks.items()
            }
        elif region is not None:
            region_source = "given (--region)"
            shared = attn.parse_region(region, names, len(windows.types))
            regions = dict.fromkeys(maps, shared)
        elif ground_truth is not None:
            if names is None:
                skipped["attention_alignment"] = f"sensor names unavailable: {names_problem}"
            else:
                region_source = "simulated ground truth (top_sensors)"
                truth = attn.regions_from_ground_truth(ground_truth, names)
                regions = {
                    c: truth[REST_TRUTH if c == REST else c]
                    for c in maps
                    if (REST_TRUTH if c == REST else c) in truth
                }
        else:
            skipped["attention_alignment"] = (
                "no expected region: pass --ground-truth (simulated cohort) or --region "
                "(sensors, or 'strongest' for those of the strongest evoked field)"
            )
        section = {}
        for condition, region_indices in regions.items():
            section[condition] = attn.spin_null(
                maps[condition],
                region_indices,
                windows.positions,
                windows.types,
                valid_any,
                n_permutations=n_permutations,
                seed=seed,
            )
            section[condition]["n_region_sensors"] = int(region_indices.size)
            section[condition]["region_sensors"] = [int(i) for i in region_indices]
            section[condition]["region_source"] = region_source
            section[condition]["n_windows"] = int((window_conditions == condition).sum())
            if condition in peaks:
                onset = data.tmin + peaks[condition] * patch_duration
                section[condition]["peak_patch_s"] = [
                    round(onset, 6),
                    round(onset + patch_duration, 6),
                ]
        corrected = attn.holm({c: v["p_value"] for c, v in section.items()})
        for condition, values in section.items():
            values["p_value_holm"] = corrected[condition]
        if section:
            metrics["attention"] = section
            figures["attention_alignment"] = plots.plot_alignment(
                section, output / "attention_alignment.png"
            ).name
        figures["attention_topomaps"] = plots.plot_topomaps(
            maps,
            windows.positions,
            windows.types,
            valid_any,
            output / "attention_topomaps.png",
            regions=regions,
        ).name
        metrics["attention_maps"] = {c: m.tolist() for c, m in maps.items()}

    # ---------------------------------------------------------------- claim 3: classification
    # Every labelled subject, as the reference model's protocol (pretraining never sees labels,
    # but it may have seen the subjects' signals), and separately the subjects held out of
    # pretraining, whose features the model never met in any form.
    label_names = data.label_names
    labelled = np.flatnonzero((data.labels != "") & (layouts == layout))
    if len(label_names) != 2 or labelled.size == 0:
        skipped["classification"] = (
            "dataset has no labels"
            if not label_names
            else f"classification needs 2 label classes; the dataset has {label_names}"
        )
    else:
        rows = _cap(labelled, keys, max_windows, rng)
        problem = _too_few_per_class(data, rows)
        if problem:
            skipped["classification"] = problem
        else:
            class_windows = load_windows(data, rows)
            features = run_inference(
                model, class_windows, batch_size=batch_size, progress=progress,
                description="classification windows",
            ).features  # fmt: skip
            labels = np.array([label_names.index(v) for v in data.labels[rows]])
            row_subjects = data.subjects[rows]

            def classify(chosen: np.ndarray, subject_set: str) -> dict[str, Any]:
                section = compare_features(
                    features[chosen],
                    class_windows.signals[chosen],
                    sfreq,
                    labels[chosen],
                    row_subjects[chosen],
                    valid=class_windows.valid[chosen],
                    n_folds=cv_folds,
                    seed=seed,
                    n_boot=n_bootstrap,
                    n_permutations=n_permutations,
                )
                ids = np.unique(row_subjects[chosen])  # the section's subject order
                seen = np.isin(ids, pretrained_on or ())
                section["subjects"] = subject_set
                section["n_pretraining_subjects"] = (
                    None if pretrained_on is None else int(seen.sum())
                )
                if pretrained_on is not None and seen.any() and not seen.all():
                    # The same out-of-fold probabilities, scored separately on the subjects
                    # the model was and was not pretrained on.
                    section["roc_auc_by_pretraining"] = {
                        group: {"n_subjects": int(members.sum()), **auroc_within(section, members)}
                        for group, members in (("pretraining", seen), ("held_out", ~seen))
                    }
                section["label_names"] = label_names
                section["positive_label"] = label_names[1]
                return section

            everyone = np.ones(rows.size, dtype=bool)
            metrics["classification"] = classify(everyone, "all labelled")
            figures["classification"] = plots.plot_classification(
                metrics["classification"], output / "classification_auroc.png"
            ).name
            if pretrained_on is None:
                skipped["classification_held_out"] = (
                    "unknown which subjects the model was pretrained on (no split.json)"
                )
            else:
                held_out = ~np.isin(row_subjects, pretrained_on)
                problem = (
                    _too_few_per_class(data, rows[held_out])
                    if held_out.any()
                    else ("every labelled subject was in pretraining")
                )
                if problem:
                    skipped["classification_held_out"] = f"held-out subjects: {problem}"
                else:
                    metrics["classification_held_out"] = classify(held_out, "held-out")

    metrics["skipped"] = skipped
    metrics["runtime_s"] = round(time.perf_counter() - start, 2)
    metrics["figures"] = figures
    metrics = _finite(metrics)
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(metrics, output, mask_folds=mask_folds, tmin=data.tmin)
    logger.info("evaluation written to %s in %.1f s", output, metrics["runtime_s"])
    return metrics


__all__ = ["METRICS_FILE", "evaluate_model"]
