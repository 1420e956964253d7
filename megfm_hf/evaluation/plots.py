"""Figures of the evaluation report (matplotlib, Agg backend; PNG files).

Every function draws one figure into ``path`` and returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mne  # noqa: E402
import numpy as np  # noqa: E402

from ..data.sensors import fit_sphere  # noqa: E402
from ..modeling.configuration_megfm import SENSOR_TYPES  # noqa: E402

PLANAR = SENSOR_TYPES.index("planar_gradiometer")
#: line colours of the reconstruction methods
COLORS = {
    "true": "black",
    "model": "tab:red",
    "interpolation": "tab:blue",
    "ridge": "tab:green",
    "zeros": "tab:gray",
}


def _save(figure: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def project_2d(xyz: np.ndarray) -> np.ndarray:
    """Azimuthal equidistant projection of sensor positions onto the plane, for topomaps.

    The centre is the least-squares sphere through the sensors; the top of the sphere maps to
    the origin. Output is scaled so the outermost sensor sits at radius 0.095 (MNE's default
    head-outline sphere), with +y towards the nose.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    center, _ = fit_sphere(xyz)
    centred = xyz - center
    radius = np.linalg.norm(centred, axis=1)
    polar = np.arccos(np.clip(centred[:, 2] / np.clip(radius, 1e-12, None), -1, 1))
    azimuth = np.arctan2(centred[:, 1], centred[:, 0])
    flat = np.c_[polar * np.cos(azimuth), polar * np.sin(azimuth)]
    return flat * (0.095 / max(float(np.abs(polar).max()), 1e-12))


def topomap_groups(
    values: np.ndarray, positions: np.ndarray, types: np.ndarray, valid: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Values per sensor group for topomaps: each non-planar type, planar pairs summed.

    Returns
    -------
    groups : dict
        ``{label: (values (n,), 2-D positions (n, 2))}``.
    """
    groups = {}
    for code in np.unique(types[valid]):
        chosen = np.flatnonzero(valid & (types == code))
        if int(code) == PLANAR:
            sites = np.round(positions[chosen, :3] * 1e4).astype(np.int64)
            _, site_index = np.unique(sites, axis=0, return_inverse=True)
            site_index = site_index.ravel()
            summed = np.bincount(site_index, weights=values[chosen])
            first = np.array([chosen[site_index == k][0] for k in range(summed.size)])
            groups["planar gradiometers (pairs summed)"] = (summed, positions[first, :3])
        else:
            groups[f"{SENSOR_TYPES[int(code)]}s"] = (values[chosen], positions[chosen, :3])
    return {label: (vals, project_2d(xyz)) for label, (vals, xyz) in groups.items()}


def plot_topomaps(
    maps: Mapping[str, np.ndarray],
    positions: np.ndarray,
    types: np.ndarray,
    valid: np.ndarray,
    path: str | Path,
    *,
    regions: Mapping[str, np.ndarray] | None = None,
    title: str = "attention over the sensor array",
) -> Path:
    """One column per condition, one row per sensor group; expected sensors are marked."""
    conditions = list(maps)
    first = topomap_groups(maps[conditions[0]], positions, types, valid)
    figure, axes = plt.subplots(
        len(first),
        len(conditions),
        figsize=(2.6 * len(conditions), 2.6 * len(first)),
        squeeze=False,
    )
    for column, condition in enumerate(conditions):
        marked = np.zeros(len(types))
        if regions and condition in regions:
            marked[regions[condition]] = 1.0
        groups = topomap_groups(maps[condition], positions, types, valid)
        region_groups = topomap_groups(marked, positions, types, valid)
        # Induced maps (post minus baseline) are signed: centre their colour scale on zero.
        signed = bool(np.min(maps[condition]) < 0)
        for row, (label, (values, flat)) in enumerate(groups.items()):
            axis = axes[row, column]
            mask = region_groups[label][0] > 0 if regions else None
            limit = float(np.abs(values).max()) or 1.0
            mne.viz.plot_topomap(
                values,
                flat,
                axes=axis,
                show=False,
                cmap="RdBu_r" if signed else "Reds",
                vlim=(-limit, limit) if signed else (None, None),
                sensors=True,
                contours=0,
                mask=mask,
                mask_params={"marker": "o", "markerfacecolor": "none", "markeredgecolor": "k"},
                sphere=(0.0, 0.0, 0.0, 0.1),
            )
            axis.set_title(f"{condition}\n{label}" if row == 0 else label, fontsize=8)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_evoked_traces(
    times: np.ndarray,
    traces: Mapping[str, Mapping[str, np.ndarray]],
    sensors: Mapping[str, Sequence[int]],
    labels: Mapping[str, Sequence[str]],
    path: str | Path,
) -> Path:
    """True vs reconstructed evoked traces of the strongest sensors, one row per condition.

    Parameters
    ----------
    times : np.ndarray, shape (T,)
        Seconds relative to the event.
    traces : Mapping
        ``{condition: {"true" | method: evoked (S, T)}}``.
    sensors : Mapping
        ``{condition: sensor indices to draw}``.
    labels : Mapping
        ``{condition: sensor labels}``.
    """
    conditions = list(traces)
    columns = max(len(v) for v in sensors.values())
    figure, axes = plt.subplots(
        len(conditions),
        columns,
        figsize=(3.2 * columns, 2.2 * len(conditions)),
        squeeze=False,
        sharex=True,
    )
    for row, condition in enumerate(conditions):
        for column, sensor in enumerate(sensors[condition]):
            axis = axes[row, column]
            for method, evoked in traces[condition].items():
                axis.plot(
                    times,
                    evoked[sensor],
                    color=COLORS.get(method, None),
                    lw=1.6 if method in ("true", "model") else 1.0,
                    ls="-" if method in ("true", "model") else "--",
                    label=method,
                )
            axis.axvline(0.0, color="0.6", lw=0.6)
            axis.set_title(f"{condition}: {labels[condition][column]}", fontsize=8)
            axis.tick_params(labelsize=7)
        for column in range(len(sensors[condition]), columns):
            axes[row, column].axis("off")
    axes[0, 0].legend(fontsize=6, loc="upper left")
    for axis in axes[-1]:
        axis.set_xlabel("time (s)", fontsize=8)
    figure.suptitle("evoked responses of hidden sensors: true vs reconstructed", fontsize=10)
    return _save(figure, path)


def plot_butterfly(
    times: np.ndarray,
    evoked: Mapping[str, Mapping[str, np.ndarray]],
    types: np.ndarray,
    valid: np.ndarray,
    path: str | Path,
) -> Path:
    """Butterfly plots (all sensors of the most common type): true | model, per condition."""
    conditions = list(evoked)
    code = np.bincount(types[valid]).argmax()
    chosen = valid & (types == code)
    methods = list(next(iter(evoked.values())))
    figure, axes = plt.subplots(
        len(conditions),
        len(methods),
        figsize=(3.4 * len(methods), 2.2 * len(conditions)),
        squeeze=False,
        sharex=True,
    )
    for row, condition in enumerate(conditions):
        limit = np.abs(evoked[condition]["true"][chosen]).max() * 1.1 or 1.0
        for column, method in enumerate(methods):
            axis = axes[row, column]
            axis.plot(times, evoked[condition][method][chosen].T, lw=0.5, color=COLORS[method])
            axis.axvline(0.0, color="0.6", lw=0.6)
            axis.set_ylim(-limit, limit)
            axis.set_title(f"{condition}: {method}", fontsize=8)
            axis.tick_params(labelsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("time (s)", fontsize=8)
    figure.suptitle(f"butterfly plots, {SENSOR_TYPES[int(code)]}s", fontsize=10)
    return _save(figure, path)


def plot_reconstruction_summary(section: Mapping, path: str | Path) -> Path:
    """NMSE per sensor type of the model and the baselines, continuous and evoked (mean)."""
    scopes = {"continuous": {"model": section.get("continuous", {})}}
    for name, values in section.get("baselines", {}).items():
        scopes["continuous"][name] = values
    evoked = {"model": section.get("evoked", {})}
    evoked.update(section.get("evoked_baselines", {}))
    scopes["evoked (mean over conditions)"] = {
        method: _mean_over_conditions(per_condition) for method, per_condition in evoked.items()
    }
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for axis, (scope, methods) in zip(axes, scopes.items(), strict=True):
        sensor_types = sorted({t for values in methods.values() for t in values})
        width = 0.8 / max(len(methods), 1)
        for offset, (method, values) in enumerate(methods.items()):
            heights = [values.get(t, {}).get("nmse", np.nan) for t in sensor_types]
            axis.bar(
                np.arange(len(sensor_types)) + offset * width,
                heights,
                width,
                label=method,
                color=COLORS.get(method),
            )
        axis.set_xticks(np.arange(len(sensor_types)) + 0.4 - width / 2, sensor_types, fontsize=7)
        axis.set_ylabel("NMSE (lower is better)", fontsize=8)
        axis.set_title(scope, fontsize=9)
        axis.axhline(1.0, color="0.5", lw=0.6, ls=":")
    axes[0].legend(fontsize=7)
    return _save(figure, path)


def _mean_over_conditions(per_condition: Mapping) -> dict[str, dict[str, float]]:
    collected: dict[str, list[float]] = {}
    for per_type in per_condition.values():
        for sensor_type, values in per_type.items():
            collected.setdefault(sensor_type, []).append(values["nmse"])
    return {t: {"nmse": float(np.nanmean(v))} for t, v in collected.items()}


def plot_alignment(section: Mapping, path: str | Path) -> Path:
    """Observed alignment per condition against its null (mean and 95% interval)."""
    conditions = list(section)
    figure, axis = plt.subplots(figsize=(1.4 * len(conditions) + 2, 3.2))
    x = np.arange(len(conditions))
    null_mean = np.array([section[c]["null_mean"] for c in conditions])
    low = np.array([section[c]["null_ci95"][0] for c in conditions])
    high = np.array([section[c]["null_ci95"][1] for c in conditions])
    axis.errorbar(
        x,
        null_mean,
        yerr=[null_mean - low, high - null_mean],
        fmt="s",
        color="0.4",
        capsize=4,
        label=f"{'/'.join(sorted({section[c].get('null', 'shuffled') for c in conditions}))} "
        "null (mean, 95%)",
    )
    axis.plot(x, [section[c]["alignment"] for c in conditions], "o", color="tab:red", ms=8)
    axis.plot([], [], "o", color="tab:red", label="model attention")
    axis.set_xticks(x, conditions, rotation=20, fontsize=8)
    axis.set_ylabel("attention mass on expected sensors", fontsize=8)
    axis.legend(fontsize=7)
    return _save(figure, path)


def plot_classification(section: Mapping, path: str | Path) -> Path:
    """AUROC with 95% bootstrap intervals: pretrained features vs raw-signal features."""
    names = list(section["features"])
    figure, axis = plt.subplots(figsize=(5.5, 3.2))
    width = 0.35
    for offset, (source, color) in enumerate((("features", "tab:red"), ("raw", "tab:gray"))):
        estimates = np.array([section[source][n]["roc_auc"] for n in names], dtype=float)
        axis.bar(
            np.arange(len(names)) + offset * width,
            estimates[:, 0],
            width,
            yerr=[estimates[:, 0] - estimates[:, 1], estimates[:, 2] - estimates[:, 0]],
            capsize=4,
            color=color,
            label="pretrained features" if source == "features" else "raw-signal features",
        )
    axis.axhline(0.5, color="0.5", lw=0.6, ls=":")
    axis.set_xticks(np.arange(len(names)) + width / 2, names, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("subject-level AUROC", fontsize=8)
    axis.legend(fontsize=7)
    return _save(figure, path)


__all__ = [
    "plot_alignment",
    "plot_butterfly",
    "plot_classification",
    "plot_evoked_traces",
    "plot_reconstruction_summary",
    "plot_topomaps",
    "project_2d",
    "topomap_groups",
]
