"""Attention maps over the sensor array, their expected regions, and the alignment test.

Method
------
*Map*: for each window and time patch, the attention each sensor receives
(:func:`.features.sensor_attention`: in ``latent`` mode the sensor cross-attention weights
averaged over heads and latent queries; in ``factorized`` mode the spatial attention averaged over
blocks, heads and query sensors), normalised to sum 1 over valid sensors.

*Stimulus-induced map* (event-locked conditions): the map at the patch where the condition's
evoked response is strongest minus the mean map over the pre-stimulus baseline patches of the
same window, averaged over the windows of the condition. The peak patch is read from the data,
never from the attention or the expected region: of the patches that start within
``PEAK_SEARCH_WINDOW`` = 0-0.3 s after the event (auditory N100m, somatosensory M20/M50), the one
where the baseline-corrected average of the condition's input windows has the most power (its
global field power, per sensor type relative to that type's strongest patch, summed over
types), as evoked responses are read at their peak. As in baseline-corrected evoked
responses, the subtraction removes what the model attends to whatever the input (its geometry
prior, sensors that are always informative) and keeps what the stimulus changes. Rest windows
have no event and use the plain map averaged over all patches. Without baseline patches
(``tmin >= 0``) the plain map at the peak patch is used.

*Alignment*: the attention mass on the expected region (for the simulated cohort, the sensors of
each type where the ground-truth evoked field is strongest: ``top_sensors`` of
``derivatives/ground_truth.json``). *Null*: a spin test, as for cortical maps: the region is
turned rigidly over the sensor helmet (rotations about the centre of the sphere fitted to the
sensors, its centroid brought onto a random sensor and spun about it by a random angle) and each
turned sensor is matched to a distinct sensor of its type; turns that push a sensor off the
array (farther than twice the median spacing from any sensor of its type) are redrawn. Both
the map and the region stay spatially smooth, so the null keeps their spatial autocorrelation:
permuting the map over sensors instead, which breaks it, gives far too small p-values for smooth
maps. Reported as null mean, 95% interval and the one-sided p-value ``(1 + #{null >= observed})
/ (1 + n_permutations)``; ``p_value_holm`` corrects it for the number of conditions tested
(Holm). A region too large to be turned over the array falls back to permuting the map within
each sensor type (``null`` says which was used).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import mne
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.transform import Rotation

from ..data.sensors import fit_sphere, pick_meg_sensors, sensor_array

logger = logging.getLogger(__name__)

#: how far a dataset sensor may be from a named channel to be matched to it, m
MATCH_TOLERANCE = 1e-3


#: interval after the event in which the evoked peak is searched for, s
PEAK_SEARCH_WINDOW = (0.0, 0.3)


def post_stimulus_patches(
    num_patches: int,
    patch_duration: float,
    tmin: float,
    window: tuple[float, float] = PEAK_SEARCH_WINDOW,
) -> np.ndarray:
    """Patches of an event-locked window that start within ``window`` after the event.

    Parameters
    ----------
    num_patches : int
    patch_duration : float
        Seconds per patch.
    tmin : float
        Start of the window relative to the event, s.
    window : (float, float)
        Interval after the event, s.

    Returns
    -------
    selected : np.ndarray of bool, shape (P,)
        All True when no patch starts in the interval (so the map is never empty).
    """
    starts = tmin + patch_duration * np.arange(num_patches)
    selected = (starts >= window[0] - 1e-9) & (starts < window[1] - 1e-9)
    return selected if selected.any() else np.ones(num_patches, dtype=bool)


def _evoked_patches(
    signals: np.ndarray, valid: np.ndarray, patch_length: int, baseline: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline-corrected average of windows, cut into patches: (S, P, patch_length), and the
    sensors valid in at least one window."""
    weights = valid[:, :, None].astype(np.float64)
    count = weights.sum(axis=0)
    evoked = (signals * weights).sum(axis=0) / np.clip(count, 1.0, None)  # (S, T)
    patches = evoked.reshape(evoked.shape[0], evoked.shape[1] // patch_length, patch_length)
    if baseline is not None and baseline.any():
        patches = patches - patches[:, baseline].mean(axis=(1, 2))[:, None, None]
    return patches, count[:, 0] > 0


def evoked_peak_patch(
    signals: np.ndarray,
    types: np.ndarray,
    valid: np.ndarray,
    patch_length: int,
    candidates: np.ndarray,
    baseline: np.ndarray | None = None,
) -> int:
    """The candidate patch where the evoked response of a set of windows is strongest.

    Parameters
    ----------
    signals : np.ndarray, shape (N, S, T)
        Event-locked input windows of one condition.
    types : np.ndarray of int, shape (S,)
        Sensor type codes; each type's power is taken relative to its strongest patch, so that
        types of different units weigh the same.
    valid : np.ndarray of bool, shape (N, S)
        Valid sensors of every window.
    patch_length : int
        Samples per patch; ``T`` is a multiple of it.
    candidates : np.ndarray of bool, shape (P,)
        Patches that may hold the peak (:func:`post_stimulus_patches`).
    baseline : np.ndarray of bool, shape (P,), optional
        Pre-stimulus patches whose mean is subtracted from every sensor first.

    Returns
    -------
    patch : int
        Index of the peak patch.
    """
    patches, sensors = _evoked_patches(signals, valid, patch_length, baseline)
    power = np.zeros(patches.shape[1])
    for code in np.unique(types[sensors]):
        rms = np.sqrt((patches[sensors & (types == code)] ** 2).mean(axis=(0, 2)))
        power += rms / max(float(rms[candidates].max()), 1e-30)
    chosen = np.flatnonzero(candidates)
    return int(chosen[np.argmax(power[chosen])])


def strongest_sensors(
    signals: np.ndarray,
    types: np.ndarray,
    valid: np.ndarray,
    patch_length: int,
    patch: int,
    baseline: np.ndarray | None = None,
    top_k: int = 10,
) -> np.ndarray:
    """The sensors of each type where a condition's evoked field is strongest at a patch.

    The expected region of a condition on real recordings, which have no simulated ground
    truth: like the simulator's ``top_sensors``, the ``top_k`` sensors of every type with the
    largest evoked field (root mean square over the patch of the baseline-corrected average of
    the windows). It is read from the input signals, never from the model.

    Parameters
    ----------
    signals, types, valid, patch_length, baseline
        As in :func:`evoked_peak_patch`.
    patch : int
        The patch to read the field at (:func:`evoked_peak_patch`).
    top_k : int
        Sensors per type.

    Returns
    -------
    region : np.ndarray of int
        Sorted sensor indices.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1")
    patches, sensors = _evoked_patches(signals, valid, patch_length, baseline)
    amplitude = np.sqrt((patches[:, patch] ** 2).mean(axis=1))
    region = []
    for code in np.unique(types[sensors]):
        members = np.flatnonzero(sensors & (types == code))
        region.extend(members[np.argsort(-amplitude[members], kind="stable")[:top_k]])
    return np.array(sorted(region), dtype=np.int64)


def baseline_patches(num_patches: int, patch_duration: float, tmin: float) -> np.ndarray:
    """Patches of an event-locked window that end before the event (the baseline)."""
    ends = tmin + patch_duration * (np.arange(num_patches) + 1)
    return ends <= 1e-9


def _per_window(attention: np.ndarray, patches: np.ndarray) -> np.ndarray:
    per_window = attention[:, patches, :].mean(axis=1)
    return per_window / np.clip(per_window.sum(axis=1, keepdims=True), 1e-12, None)


def induced_map(attention: np.ndarray, post: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Post-stimulus minus baseline attention, averaged over windows (N, P, S) -> (S,).

    Each window's post-stimulus and baseline maps are normalised to sum 1 first, so the
    result sums to 0: positive where the stimulus draws attention, negative where it draws it
    away.
    """
    return (_per_window(attention, post) - _per_window(attention, baseline)).mean(axis=0)


def condition_map(attention: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """Average per-window, per-patch maps (N, P, S) over the chosen patches and windows.

    Returns
    -------
    map : np.ndarray, shape (S,)
        Sums to 1.
    """
    averaged = _per_window(attention, patches).mean(axis=0)
    return averaged / max(float(averaged.sum()), 1e-12)


def alignment_score(attention_map: np.ndarray, region: np.ndarray) -> float:
    """Attention mass on the region (indices or boolean mask): of a map summing to 1, or the
    attention a stimulus adds there for an induced map."""
    return float(np.asarray(attention_map)[np.asarray(region)].sum())


def shuffled_null(
    attention_map: np.ndarray,
    region: np.ndarray,
    types: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    n_permutations: int = 2000,
    seed: int = 0,
) -> dict[str, float | list[float] | str]:
    """Alignment of the map against the scores of sensor-shuffled maps.

    Shuffling ignores the spatial smoothness of maps and regions, so its p-values are too small
    for smooth maps; :func:`spin_null` keeps it and is the test used, with this one as its
    fallback for regions too large to turn over the array.

    Parameters
    ----------
    attention_map : np.ndarray, shape (S,)
    region : np.ndarray of int or bool
        Expected sensors.
    types : np.ndarray of int, shape (S,)
        The map is permuted within each sensor type.
    valid : np.ndarray of bool, shape (S,), optional
        Only valid sensors are permuted (others hold no attention).
    n_permutations : int
    seed : int

    Returns
    -------
    result : dict
        As :func:`spin_null`, with ``null`` = ``"shuffled"``.
    """
    attention_map = np.asarray(attention_map, dtype=np.float64)
    in_region = _region_mask(region, attention_map.size)
    valid = np.ones(attention_map.shape, dtype=bool) if valid is None else np.asarray(valid)
    rng = np.random.default_rng(seed)
    null = np.zeros(n_permutations)
    for code in np.unique(types[valid]):
        members = np.flatnonzero(valid & (types == code))
        values = attention_map[members]
        weights = in_region[members].astype(np.float64)
        # Permuting the map is the same as permuting which sensors are in the region.
        order = rng.permuted(np.tile(np.arange(members.size), (n_permutations, 1)), axis=1)
        null += values[order] @ weights
    return _null_result(float(attention_map[in_region].sum()), null, "shuffled")


#: how far (in median sensor spacings) a turned region sensor may land from any sensor
SPIN_TOLERANCE = 2.0


def spin_null(
    attention_map: np.ndarray,
    region: np.ndarray,
    positions: np.ndarray,
    types: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    n_permutations: int = 2000,
    seed: int = 0,
) -> dict[str, float | list[float] | str]:
    """Alignment of the map against the scores of the region turned over the sensor helmet.

    Parameters
    ----------
    attention_map : np.ndarray, shape (S,)
    region : np.ndarray of int or bool
        Expected sensors.
    positions : np.ndarray, shape (S, 3) or (S, 6)
        Sensor positions, m (orientations, if given, are not used).
    types : np.ndarray of int, shape (S,)
        A turned region sensor is matched to a sensor of its own type.
    valid : np.ndarray of bool, shape (S,), optional
        Only valid sensors can be matched (others hold no attention).
    n_permutations : int
        Turns of the region.
    seed : int

    Returns
    -------
    result : dict
        ``alignment``, ``null_mean``, ``null_ci95`` ([2.5, 97.5] percentiles), ``p_value``
        (one-sided), ``n_permutations`` and ``null`` (``"spin"``, or ``"shuffled"`` when the
        region cannot be turned over the array: :func:`shuffled_null`).
    """
    attention_map = np.asarray(attention_map, dtype=np.float64)
    in_region = _region_mask(region, attention_map.size)
    valid = np.ones(attention_map.shape, dtype=bool) if valid is None else np.asarray(valid)
    in_region &= valid
    points = np.asarray(positions, dtype=np.float64)[:, :3]
    center, _ = fit_sphere(points[valid])
    rng = np.random.default_rng(seed)
    groups = []  # per sensor type: region sensors, candidate sensors, tolerance
    for code in np.unique(types[in_region]):
        candidates = np.flatnonzero(valid & (types == code))
        groups.append(
            (
                np.flatnonzero(in_region & (types == code)),
                candidates,
                SPIN_TOLERANCE * _median_spacing(points[candidates]),
            )
        )
    region_points = points[in_region] - center
    centroid = region_points.mean(axis=0)
    targets = points[valid] - center
    null: list[float] = []
    for _ in range(20 * n_permutations):
        if len(null) == n_permutations:
            break
        turn = _random_turn(centroid, targets[rng.integers(len(targets))], rng)
        score = 0.0
        for members, candidates, tolerance in groups:
            turned = turn.apply(points[members] - center) + center
            distance = np.linalg.norm(turned[:, None] - points[candidates][None], axis=-1)
            rows, columns = linear_sum_assignment(distance)
            if distance[rows, columns].max() > tolerance:
                break
            score += float(attention_map[candidates[columns]].sum())
        else:
            null.append(score)
    if len(null) < n_permutations:
        logger.warning(
            "the expected region (%d sensors) cannot be turned over the sensor array often "
            "enough (%d of %d turns fit); falling back to shuffling the map over sensors",
            int(in_region.sum()),
            len(null),
            n_permutations,
        )
        return shuffled_null(
            attention_map, in_region, types, valid, n_permutations=n_permutations, seed=seed
        )
    return _null_result(float(attention_map[in_region].sum()), np.asarray(null), "spin")


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down correction of several p-values for the number of tests."""
    order = sorted(p_values, key=lambda k: p_values[k])
    corrected: dict[str, float] = {}
    running = 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[key]))
        corrected[key] = running
    return corrected


def _region_mask(region: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[np.asarray(region)] = True
    return mask


def _null_result(observed: float, null: np.ndarray, kind: str) -> dict:
    return {
        "alignment": observed,
        "null_mean": float(null.mean()),
        "null_ci95": [float(np.percentile(null, 2.5)), float(np.percentile(null, 97.5))],
        "p_value": float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size)),
        "n_permutations": int(null.size),
        "null": kind,
    }


def _median_spacing(points: np.ndarray) -> float:
    """Median distance from each sensor site to its nearest other site (sensors sharing a site,
    as the two planar gradiometers of a Neuromag position, count as one)."""
    sites = np.unique(np.round(points, 4), axis=0)
    if len(sites) < 2:
        return 0.0
    distance = np.linalg.norm(sites[:, None] - sites[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    return float(np.median(distance.min(axis=1)))


def _random_turn(source: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> Rotation:
    """A rotation taking direction ``source`` to ``target``, then spun about ``target`` by a
    uniform random angle."""
    align = Rotation.align_vectors(target[None], source[None])[0]
    axis = target / max(float(np.linalg.norm(target)), 1e-12)
    return Rotation.from_rotvec(axis * rng.uniform(0.0, 2.0 * np.pi)) * align


# --------------------------------------------------------------------------- sensor names


def channel_names_from_recording(path: str | Path) -> tuple[list[str], np.ndarray]:
    """MEG channel names and geometry of a recording, in the dataset's sensor order.

    Parameters
    ----------
    path : str | Path
        Any MEG file MNE reads (for the simulated cohort, one of its FIF files).

    Returns
    -------
    names : list of str
    positions : np.ndarray, shape (S, 6)
        As the dataset stores them (head coordinates when the file has a device-to-head
        transform).
    """
    info = mne.io.read_info(path, verbose="error")
    picks = pick_meg_sensors(info, path)
    sensors = sensor_array(mne.pick_info(info, picks, verbose="error"), path)
    return list(sensors.ch_names), sensors.positions


def find_recording(bids_root: str | Path) -> Path:
    """The first ``*_meg.fif`` file under a BIDS root (all runs of a cohort share sensors)."""
    root = Path(bids_root)
    for path in sorted(root.glob("sub-*/**/*_meg.fif")):
        return path
    raise FileNotFoundError(
        f"no *_meg.fif recording under {str(root)!r} to read channel names from; pass a "
        "recording with the sensor array or give the region as sensor indices"
    )


def match_channel_names(
    positions: np.ndarray, names: Sequence[str], named_positions: np.ndarray
) -> list[str | None]:
    """Name each dataset sensor by the channel at the same position and orientation.

    Dataset rows carry geometry but not channel names; two planar gradiometers share a
    position and differ in orientation, so both are compared.

    Parameters
    ----------
    positions : np.ndarray, shape (S, 6)
        Dataset sensors.
    names : sequence of str
        Channel names of the recording.
    named_positions : np.ndarray, shape (C, 6)
        Their geometry (:func:`channel_names_from_recording`).

    Returns
    -------
    matched : list of str or None
        None for a sensor with no channel within :data:`MATCH_TOLERANCE`.
    """
    distance = np.linalg.norm(positions[:, None, :3] - named_positions[None, :, :3], axis=-1)
    alignment = positions[:, 3:6] @ named_positions[:, 3:6].T
    best = (distance + MATCH_TOLERANCE * (1.0 - alignment)).argmin(axis=1)
    rows = np.arange(len(best))
    ok = (distance[rows, best] < MATCH_TOLERANCE) & (alignment[rows, best] > 0.99)
    return [str(names[j]) if good else None for j, good in zip(best, ok, strict=True)]


def regions_from_ground_truth(
    ground_truth: str | Path | Mapping, sensor_names: Sequence[str | None]
) -> dict[str, np.ndarray]:
    """Expected sensors per condition: the ground truth's ``top_sensors`` of every type.

    Parameters
    ----------
    ground_truth : str | Path | Mapping
        ``derivatives/ground_truth.json`` of a simulated cohort, or its content.
    sensor_names : sequence of str or None
        Name of every dataset sensor (:func:`match_channel_names`).

    Returns
    -------
    regions : dict
        ``{condition: sensor indices}`` for every condition with named sensors in the dataset.
    """
    if not isinstance(ground_truth, Mapping):
        path = Path(ground_truth)
        if not path.is_file():
            raise FileNotFoundError(f"ground truth file {str(path)!r} does not exist")
        ground_truth = json.loads(path.read_text())
    conditions = ground_truth.get("conditions")
    if not isinstance(conditions, Mapping):
        raise ValueError("ground truth has no 'conditions' section with 'top_sensors'")
    index = {name: i for i, name in enumerate(sensor_names) if name is not None}
    regions = {}
    for condition, truth in conditions.items():
        names = [n for per_type in truth.get("top_sensors", {}).values() for n in per_type]
        found = np.array(sorted(index[n] for n in names if n in index), dtype=np.int64)
        if names and found.size < len(names):
            logger.warning(
                "%s: %d of %d ground-truth sensors are not in the dataset",
                condition,
                len(names) - found.size,
                len(names),
            )
        if found.size:
            regions[condition] = found
    return regions


def parse_region(
    region: str | Sequence[str | int], sensor_names: Sequence[str | None] | None, num_sensors: int
) -> np.ndarray:
    """Sensor indices from a list of indices or channel names (``"0,5,9"`` or ``"MEG 0111,..."``).

    Raises
    ------
    ValueError
        For an index out of range or a name that cannot be resolved.
    """
    items = [s.strip() for s in region.split(",")] if isinstance(region, str) else list(region)
    indices = []
    for item in items:
        if item == "":
            continue
        if isinstance(item, int) or str(item).isdigit():
            value = int(item)
            if not 0 <= value < num_sensors:
                raise ValueError(f"region sensor index {value} is outside [0, {num_sensors})")
            indices.append(value)
            continue
        if sensor_names is None or item not in sensor_names:
            raise ValueError(
                f"region sensor {item!r} cannot be resolved: give sensor indices, or a recording "
                "(--ground-truth of a BIDS cohort) to read channel names from"
            )
        indices.append(list(sensor_names).index(item))
    if not indices:
        raise ValueError(f"region {region!r} names no sensor")
    return np.array(sorted(set(indices)), dtype=np.int64)


__all__ = [
    "alignment_score",
    "channel_names_from_recording",
    "condition_map",
    "find_recording",
    "holm",
    "match_channel_names",
    "parse_region",
    "post_stimulus_patches",
    "baseline_patches",
    "evoked_peak_patch",
    "induced_map",
    "PEAK_SEARCH_WINDOW",
    "regions_from_ground_truth",
    "shuffled_null",
    "spin_null",
    "strongest_sensors",
]
