"""The simulated patient/control cohort: subjects, planted group effect, runs, BIDS and ground truth.

Each subject has three runs, written as FIF files in a BIDS dataset through mne-bids:

- ``task-rest``: 1/f background from distributed dipoles and posterior alpha;
- ``task-auditory``: left- and right-ear tones, answered by both auditory cortices (N100m);
- ``task-somatosensory``: left and right median-nerve stimuli, answered by the contralateral
  primary somatosensory cortex (M20, M35-50).

Group effect (scaled by ``effect_size``; 0 gives a null cohort): migraine patients lack the
habituation of evoked amplitude over repeated stimuli that controls show, and their alpha peak is
slower. See :data:`GROUP_EFFECT` for the numbers and :func:`simulate_cohort` for the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

import mne
import mne_bids
import numpy as np
from mne.io.constants import FIFF
from tqdm.auto import tqdm

from .geometry import SensorGeometry, describe_sensor_array, load_geometry
from .sources import (
    CANONICAL_DIPOLES,
    PlacedSources,
    colored_noise,
    evoked_template,
    narrowband_noise,
    place_responses,
    place_sources,
    sensor_noise,
)

logger = logging.getLogger(__name__)

GROUPS = ("control", "migraine")
TASKS = ("rest", "auditory", "somatosensory")
STIM_CHANNEL = "STI 014"
#: event codes written to ``STI 014`` and to the BIDS ``events.tsv`` files
EVENT_ID = {
    "auditory/left": 1,
    "auditory/right": 2,
    "somatosensory/left": 3,
    "somatosensory/right": 4,
}
#: location of the ground truth, relative to the BIDS root
GROUND_TRUTH_RELPATH = Path("derivatives") / "ground_truth.json"
#: how the ground truth's description begins: marks a folder this simulation wrote
GROUND_TRUTH_DESCRIPTION = "Ground truth of a simulated MEG cohort (megfm_hf.simulation)."
#: files the simulation (through mne-bids) writes at the top of the BIDS root
_ROOT_FILES = frozenset(
    {"README", "dataset_description.json", "participants.tsv", "participants.json"}
)
#: prefix of the folders, inside the BIDS root, where a cohort is written before it is swapped in
_STAGING_PREFIX = ".megfm-simulation-"
#: files the simulation writes in a subject folder, relative to the BIDS root
_SUBJECT_FILE = re.compile(
    r"(sub-[A-Za-z0-9]+)/(?:\1_scans\.tsv|meg/\1_(?:coordsystem\.json"
    r"|task-(?:rest|auditory|somatosensory)_[A-Za-z0-9_-]+\.(?:fif|json|tsv)))"
)
#: lowest sampling rate that represents the 20-ms somatosensory component (4-ms Gaussian), Hz
MIN_SFREQ = 150.0
MAX_SFREQ = 10_000.0
MIN_DURATION = 5.0
#: length of the evoked responses; stimuli closer than this to the end of a run are not given, s
RESPONSE_DURATION = 0.5
#: alpha in task runs relative to rest (eyes open, attending the stimuli)
TASK_ALPHA_FACTOR = 0.3
#: fixed measurement date, so that files are reproducible byte for byte
MEAS_DATE = None

#: population parameters: mean and between-subject standard deviation of each planted parameter;
#: ``*_shift`` is what patients lose at ``effect_size=1``
GROUP_EFFECT = {
    "alpha_peak_hz": {"control_mean": 10.0, "migraine_shift": -0.8, "sd": 0.7},
    "habituation": {"control_mean": 0.45, "migraine_shift": -0.35, "sd": 0.12},
}
#: parameters that vary between subjects but not between groups: (mean, sd, lower, upper)
SUBJECT_VARIABILITY = {
    "alpha_moment_nAm": (25.0, 6.0, 8.0, 50.0),
    "auditory_moment_nAm": (50.0, 10.0, 25.0, 80.0),
    "auditory_latency_s": (0.100, 0.007, 0.085, 0.120),
    "auditory_contra_ratio": (1.25, 0.08, 1.05, 1.5),
    "somatosensory_moment_nAm": (20.0, 4.0, 10.0, 35.0),
    "somatosensory_latency_s": (0.020, 0.0015, 0.017, 0.024),
    "background_moment_nAm": (3.5, 0.7, 2.0, 6.0),
    "background_exponent": (1.0, 0.15, 0.6, 1.5),
}
HABITUATION_LIMITS = (-0.3, 0.9)
ALPHA_PEAK_LIMITS = (7.0, 13.5)
#: trial-to-trial variability of evoked amplitude (relative standard deviation)
TRIAL_AMPLITUDE_SD = 0.1
#: contralateral auditory responses come this much earlier than ipsilateral ones, s
AUDITORY_IPSI_DELAY = 0.008


@dataclass(frozen=True)
class CohortConfig:
    """Options of a simulated cohort.

    Parameters
    ----------
    n_subjects : int
        Number of subjects, split as evenly as possible between ``control`` and ``migraine``.
    seed : int
        Seed of every random draw; the same seed gives byte-identical data files.
    effect_size : float
        Scale of the planted group difference, 0 (null cohort) to 3; 1 is the default
        difference described in :data:`GROUP_EFFECT`.
    duration : float
        Length of each run, s.
    sfreq : float
        Sampling rate, Hz.
    geometry : str | pathlib.Path | None
        Recording to take the sensor array from, or ``None`` for the built-in 306-sensor helmet.
    isi : float
        Mean interval between stimulus onsets, s.
    isi_jitter : float
        Onset intervals are drawn uniformly from ``isi +/- isi_jitter``, s.
    n_background_sources : int
        Number of distributed dipoles that carry the 1/f background.
    top_k : int
        Number of sensors per channel type listed in the ground truth for each condition.
    line_freq : float
        Power-line frequency stored in the metadata (no line noise is simulated), Hz.
    """

    n_subjects: int = 16
    seed: int = 0
    effect_size: float = 1.0
    duration: float = 30.0
    sfreq: float = 250.0
    geometry: str | Path | None = None
    isi: float = 1.0
    isi_jitter: float = 0.15
    n_background_sources: int = 48
    top_k: int = 10
    line_freq: float = 50.0

    def __post_init__(self) -> None:
        for name in ("n_subjects", "n_background_sources", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        _check_range("effect_size", self.effect_size, 0.0, 3.0, "(0 gives a null cohort)")
        _check_range(
            "sfreq", self.sfreq, MIN_SFREQ, MAX_SFREQ,
            "Hz: the 20-ms somatosensory component needs at least 150 Hz",
        )  # fmt: skip
        _check_range("isi", self.isi, 0.6, 10.0, "s: responses last 0.5 s")
        _check_range("isi_jitter", self.isi_jitter, 0.0, self.isi - 0.55, "s (isi - 0.55 at most)")
        _check_range(
            "duration", self.duration, max(MIN_DURATION, 3 * self.isi + RESPONSE_DURATION), 3600.0,
            "s per run: each task run needs a few stimuli",
        )  # fmt: skip
        _check_range("line_freq", self.line_freq, 1.0, 1000.0, "Hz")
        if self.geometry is not None and not isinstance(self.geometry, str | os.PathLike):
            raise ValueError(f"geometry must be a path or None, got {self.geometry!r}")

    @property
    def n_times(self) -> int:
        """Samples per run."""
        return int(round(self.duration * self.sfreq))


def _check_range(name: str, value: float, low: float, high: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}] {what}, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be in [{low:g}, {high:g}] {what}, got {value!r}")


@dataclass(frozen=True)
class SubjectParameters:
    """The planted parameters of one subject (all of them are written to the ground truth).

    Attributes
    ----------
    participant_id : str
        BIDS subject label with prefix, e.g. ``"sub-01"``.
    group : str
        ``"control"`` or ``"migraine"``.
    alpha_peak_hz : float
        Centre of the alpha peak, Hz.
    habituation : float
        Fraction of evoked amplitude lost from the first to the last stimulus of a task run:
        the response to stimulus ``k`` of ``n`` is scaled by ``1 - habituation * k / (n - 1)``.
    alpha_moment_nAm, auditory_moment_nAm, somatosensory_moment_nAm, background_moment_nAm : float
        Alpha (RMS at rest), N100m peak (contralateral), M20 peak and background (RMS, per
        dipole) moments, nA*m.
    auditory_latency_s, somatosensory_latency_s : float
        Contralateral N100m and M20 peak latencies, s.
    auditory_contra_ratio : float
        Contralateral / ipsilateral N100m amplitude.
    background_exponent : float
        Spectral exponent of the background activity (power ~ 1/f**exponent).
    """

    participant_id: str
    group: str
    alpha_peak_hz: float
    habituation: float
    alpha_moment_nAm: float
    auditory_moment_nAm: float
    auditory_latency_s: float
    auditory_contra_ratio: float
    somatosensory_moment_nAm: float
    somatosensory_latency_s: float
    background_moment_nAm: float
    background_exponent: float


@dataclass
class CohortResult:
    """What :func:`simulate_cohort` wrote.

    Attributes
    ----------
    root : pathlib.Path
        BIDS root.
    ground_truth_path : pathlib.Path
        The ground-truth JSON file.
    subjects : list of SubjectParameters
        Planted parameters per subject.
    files : list of pathlib.Path
        The FIF recordings, in writing order.
    """

    root: Path
    ground_truth_path: Path
    subjects: list[SubjectParameters]
    files: list[Path] = field(default_factory=list)


def _rng(config: CohortConfig, *key: int) -> np.random.Generator:
    # spawn keys make each subject's draws independent of cohort size and of effect_size
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=key))


def assign_groups(config: CohortConfig) -> list[str]:
    """Balanced, randomly ordered group labels, one per subject."""
    labels = [GROUPS[i % 2] for i in range(config.n_subjects)]
    return [labels[i] for i in _rng(config, 0, 1).permutation(config.n_subjects)]


def draw_subject_parameters(config: CohortConfig, index: int, group: str) -> SubjectParameters:
    """Draw the planted parameters of subject ``index`` (0-based).

    The standard-normal draws do not depend on the group or on ``effect_size``, so cohorts
    that differ only in ``effect_size`` differ only in the planted group effect.
    """
    rng = _rng(config, index + 1, 0)
    z_alpha, z_habituation = rng.standard_normal(2)
    z_other = rng.standard_normal(len(SUBJECT_VARIABILITY))
    patient = float(group == "migraine") * config.effect_size
    alpha = GROUP_EFFECT["alpha_peak_hz"]
    habituation = GROUP_EFFECT["habituation"]
    alpha_peak = alpha["control_mean"] + patient * alpha["migraine_shift"] + alpha["sd"] * z_alpha
    habituation_value = (
        habituation["control_mean"]
        + patient * habituation["migraine_shift"]
        + habituation["sd"] * z_habituation
    )
    others = {
        name: float(np.clip(mean + sd * z, low, high))
        for (name, (mean, sd, low, high)), z in zip(
            SUBJECT_VARIABILITY.items(), z_other, strict=True
        )
    }
    return SubjectParameters(
        participant_id=f"sub-{index + 1:0{max(2, len(str(config.n_subjects)))}d}",
        group=group,
        alpha_peak_hz=float(np.clip(alpha_peak, *ALPHA_PEAK_LIMITS)),
        habituation=float(np.clip(habituation_value, *HABITUATION_LIMITS)),
        **others,
    )


def _stimulus_schedule(
    config: CohortConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Onsets (samples) and sides (0 left, 1 right) of the stimuli of one task run."""
    max_count = int(config.duration / (config.isi - config.isi_jitter)) + 1
    intervals = config.isi + rng.uniform(-config.isi_jitter, config.isi_jitter, max_count)
    onsets_s = 0.5 + np.cumsum(intervals) - intervals[0]
    onsets_s = onsets_s[onsets_s + RESPONSE_DURATION < config.duration - 0.05]
    sides = rng.permutation(np.arange(len(onsets_s)) % 2)
    return np.round(onsets_s * config.sfreq).astype(int), sides


def _habituation_gains(n_stimuli: int, habituation: float, rng: np.random.Generator) -> np.ndarray:
    position = np.arange(n_stimuli) / max(n_stimuli - 1, 1)
    trial = 1.0 + TRIAL_AMPLITUDE_SD * rng.standard_normal(n_stimuli)
    return np.clip((1.0 - habituation * position) * trial, 0.0, None)


def _auditory_templates(params: SubjectParameters, sfreq: float) -> dict[bool, np.ndarray]:
    """Source waveform per hemisphere role (True: contralateral to the stimulated ear), A*m."""
    peak = params.auditory_moment_nAm * 1e-9
    templates = {}
    for contra in (True, False):
        amplitude = peak if contra else peak / params.auditory_contra_ratio
        latency = params.auditory_latency_s + (0.0 if contra else AUDITORY_IPSI_DELAY)
        templates[contra] = evoked_template(
            sfreq,
            [
                (0.05, 0.010, -0.25 * amplitude),  # P50m
                (latency, 0.018, amplitude),  # N100m
                (0.19, 0.030, -0.35 * amplitude),  # P200m
            ],
            RESPONSE_DURATION,
        )
    return templates


def _somatosensory_template(params: SubjectParameters, sfreq: float) -> np.ndarray:
    peak = params.somatosensory_moment_nAm * 1e-9
    return evoked_template(
        sfreq,
        [
            (params.somatosensory_latency_s, 0.004, peak),  # M20 (area 3b, N20m)
            (params.somatosensory_latency_s + 0.022, 0.009, -1.4 * peak),  # M35-50
            (0.09, 0.025, 0.3 * peak),
        ],
        RESPONSE_DURATION,
    )


def simulate_run(
    task: str,
    params: SubjectParameters,
    sources: PlacedSources,
    geometry: SensorGeometry,
    config: CohortConfig,
    rng: np.random.Generator,
) -> tuple[mne.io.RawArray, np.ndarray]:
    """Simulate one run of one subject.

    Parameters
    ----------
    task : str
        ``"rest"``, ``"auditory"`` or ``"somatosensory"``.
    params : SubjectParameters
        The subject.
    sources : PlacedSources
        Dipoles and their forward fields.
    geometry : SensorGeometry
        The sensor array.
    config : CohortConfig
        Cohort options (duration, sfreq, stimulus timing).
    rng : numpy.random.Generator
        Random generator of this run.

    Returns
    -------
    raw : mne.io.RawArray
        MEG channels (T, T/m) and the stimulus channel ``STI 014``.
    events : numpy.ndarray, shape (n_events, 3)
        MNE events (sample, 0, code); empty for rest.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    n_times, sfreq = config.n_times, config.sfreq
    onsets, sides = _stimulus_schedule(config, rng)
    n_dipoles = len(sources.names)
    moments = np.zeros((n_dipoles, n_times))

    n_canonical = len(CANONICAL_DIPOLES)
    moments[n_canonical:] = (
        params.background_moment_nAm
        * 1e-9
        * colored_noise(rng, n_dipoles - n_canonical, n_times, sfreq, params.background_exponent)
    )
    alpha_rms = params.alpha_moment_nAm * 1e-9 * (1.0 if task == "rest" else TASK_ALPHA_FACTOR)
    alpha_rows = [sources.index("alpha_left"), sources.index("alpha_right")]
    moments[alpha_rows] = alpha_rms * narrowband_noise(rng, 2, n_times, sfreq, params.alpha_peak_hz)

    events = np.zeros((0, 3), dtype=int)
    if task != "rest":
        gains = _habituation_gains(len(onsets), params.habituation, rng)
        codes = EVENT_ID[f"{task}/left"] + sides
        events = np.column_stack([onsets, np.zeros_like(onsets), codes]).astype(int)
        for side_index, side in enumerate(("left", "right")):
            chosen = sides == side_index
            if task == "auditory":
                templates = _auditory_templates(params, sfreq)
                for hemisphere in ("left", "right"):
                    row = sources.index(f"auditory_{hemisphere}")
                    moments[row] += place_responses(
                        n_times, onsets[chosen], gains[chosen], templates[hemisphere != side]
                    )
            else:
                contralateral = "right" if side == "left" else "left"
                row = sources.index(f"somatosensory_{contralateral}")
                moments[row] += place_responses(
                    n_times, onsets[chosen], gains[chosen], _somatosensory_template(params, sfreq)
                )

    ch_types = geometry.info.get_channel_types()
    meg = sources.gain @ moments + sensor_noise(rng, ch_types, n_times, sfreq)
    stim = np.zeros((1, n_times))
    # pulses of a few samples so that mne.find_events' default shortest_event accepts them
    pulse = max(2, int(round(0.01 * sfreq)))
    for onset, code in zip(events[:, 0], events[:, 2], strict=True):
        stim[0, onset : onset + pulse] = code
    return _make_raw(geometry, np.vstack([meg, stim]), config), events


def _make_raw(geometry: SensorGeometry, data: np.ndarray, config: CohortConfig) -> mne.io.RawArray:
    info = geometry.info.copy()
    stim_info = mne.create_info([STIM_CHANNEL], config.sfreq, ["stim"])
    raw = mne.io.RawArray(data[:-1], info, verbose="error")
    raw.add_channels(
        [mne.io.RawArray(data[-1:], stim_info, verbose="error")], force_update_info=True
    )
    with raw.info._unlock():
        raw.info["line_freq"] = config.line_freq
        raw.info["description"] = "Simulated MEG (megfm-hf simulation)"
    raw.set_meas_date(MEAS_DATE)
    # mne-bids saves in the original format; single precision halves the files at no cost
    raw.orig_format = "single"
    return raw


def _scrub_fif_ids(path: Path) -> None:
    """Zero the machine id that MNE writes into FIF id tags.

    MNE stamps every FIF file and block id with the writing machine's network address, which
    would make files differ between machines and identify the machine. The file's tags are
    walked in sequence and only the id structures are rewritten.
    """
    id_struct_type, tag_header = 31, struct.Struct(">iiii")
    data = bytearray(path.read_bytes())
    position = 0
    while position + tag_header.size <= len(data):
        _, tag_type, size, _ = tag_header.unpack_from(data, position)
        start = position + tag_header.size
        if tag_type == id_struct_type and size == 20:
            data[start + 4 : start + 12] = bytes(8)  # the id is (version, machid[2], secs, usecs)
        position = start + size
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def _kit_chpi_workaround(info: mne.Info) -> Iterator[None]:
    """Let mne-bids write KIT-geometry data that did not come from a KIT file.

    mne-bids 0.20 looks for KIT head-position coils with ``mne.chpi.extract_chpi_locs_kit``,
    which raises ``TypeError`` (not the ``RuntimeError``/``ValueError`` mne-bids catches) for a
    ``RawArray``. Simulated data have no such coils, so the look-up is made to report none.
    """
    is_kit = any(ch["coil_type"] & 0xFFFF == FIFF.FIFFV_COIL_KIT_GRAD for ch in info["chs"])
    if not is_kit:
        yield
        return

    def no_kit_coils(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated data carry no KIT head-position coils")

    with mock.patch.object(mne.chpi, "extract_chpi_locs_kit", no_kit_coils):
        yield


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8", newline="\n"
    ) as handle:
        handle.write(text)
        temporary = Path(handle.name)
    os.replace(temporary, path)


def _write_participants(root: Path, subjects: list[SubjectParameters]) -> None:
    lines = ["participant_id\tgroup"] + [f"{s.participant_id}\t{s.group}" for s in subjects]
    _atomic_write_text(root / "participants.tsv", "\n".join(lines) + "\n")
    sidecar = {
        "participant_id": {"Description": "Simulated subject label."},
        "group": {
            "Description": "Simulated diagnostic group; the planted group effect is described "
            f"in {GROUND_TRUTH_RELPATH.as_posix()}.",
            "Levels": {
                "control": "healthy control: evoked responses habituate, typical alpha peak",
                "migraine": "patient: no habituation of evoked responses, slower alpha peak",
            },
        },
    }
    _atomic_write_text(root / "participants.json", json.dumps(sidecar, indent=2) + "\n")


def _top_sensors(
    field_pattern: np.ndarray, geometry: SensorGeometry, top_k: int
) -> dict[str, list[str]]:
    ch_types = np.asarray(geometry.info.get_channel_types())
    ch_names = np.asarray(geometry.ch_names)
    result = {}
    for ch_type in sorted(set(ch_types)):
        picks = np.flatnonzero(ch_types == ch_type)
        order = np.argsort(-np.abs(field_pattern[picks]), kind="stable")[:top_k]
        result[ch_type] = [str(name) for name in ch_names[picks[order]]]
    return result


def _condition_truth(
    sources: PlacedSources, geometry: SensorGeometry, config: CohortConfig
) -> dict[str, dict]:
    """Per condition: dipoles and the sensors where the field is strongest at the main peak."""
    mean = {name: values[0] for name, values in SUBJECT_VARIABILITY.items()}
    canonical = {spec.name: spec for spec in CANONICAL_DIPOLES}

    def dipole(name: str, weight: float) -> dict:
        row = sources.index(name)
        return {
            "name": name,
            "region": canonical[name].region,
            "position_m": [round(float(v), 6) for v in sources.positions[row]],
            "orientation": [round(float(v), 6) for v in sources.orientations[row]],
            "relative_amplitude": round(weight, 4),
        }

    conditions = {}
    for side in ("left", "right"):
        contra = "right" if side == "left" else "left"
        weights = {
            f"auditory_{contra}": 1.0,
            f"auditory_{side}": 1.0 / mean["auditory_contra_ratio"],
        }
        conditions[f"auditory/{side}"] = {
            "task": "auditory",
            "event_code": EVENT_ID[f"auditory/{side}"],
            "stimulus": f"tone to the {side} ear",
            "components_s": {"P50m": 0.05, "N100m": mean["auditory_latency_s"], "P200m": 0.19},
            "peak_latency_s": mean["auditory_latency_s"],
            "dipoles": [dipole(name, weight) for name, weight in weights.items()],
            "weights": weights,
        }
        conditions[f"somatosensory/{side}"] = {
            "task": "somatosensory",
            "event_code": EVENT_ID[f"somatosensory/{side}"],
            "stimulus": f"{side} median nerve",
            "components_s": {
                "M20": mean["somatosensory_latency_s"],
                "M35-50": mean["somatosensory_latency_s"] + 0.022,
            },
            "peak_latency_s": mean["somatosensory_latency_s"] + 0.022,
            "dipoles": [dipole(f"somatosensory_{contra}", 1.0)],
            "weights": {f"somatosensory_{contra}": 1.0},
        }
    conditions["rest/alpha"] = {
        "task": "rest",
        "event_code": None,
        "stimulus": None,
        "dipoles": [dipole("alpha_left", 1.0), dipole("alpha_right", 1.0)],
        "weights": {"alpha_left": 1.0, "alpha_right": 1.0},
    }
    for condition in conditions.values():
        weights = condition.pop("weights")
        # alpha generators are independent, so their powers add; evoked fields add linearly
        if condition["task"] == "rest":
            strength = np.sqrt(sum((sources.gain[:, sources.index(n)]) ** 2 for n in weights))
        else:
            strength = sum(w * sources.gain[:, sources.index(n)] for n, w in weights.items())
        condition["top_sensors"] = _top_sensors(strength, geometry, config.top_k)
    return conditions


def _rounded(value: object, digits: int = 6) -> object:
    """Floats rounded for a readable JSON file (micro-units are far below any tolerance)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: _rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    return value


def _ground_truth(
    config: CohortConfig,
    geometry: SensorGeometry,
    sources: PlacedSources,
    subjects: list[SubjectParameters],
) -> dict:
    return {
        "schema_version": 2,
        "description": (
            f"{GROUND_TRUTH_DESCRIPTION} Positions are in head coordinates (m; +x right, +y "
            "nose, +z up); moments in nA*m."
        ),
        "config": {
            "n_subjects": config.n_subjects,
            "seed": config.seed,
            "effect_size": config.effect_size,
            "duration_s": config.duration,
            "sfreq_hz": config.sfreq,
            "isi_s": config.isi,
            "isi_jitter_s": config.isi_jitter,
            "n_background_sources": config.n_background_sources,
            # what the sensor array is, never its file name (which may carry a subject id)
            "geometry": describe_sensor_array(geometry),
            "n_meg_channels": len(geometry.ch_names),
        },
        "head_model": {
            "type": "sphere (mne.make_sphere_model)",
            "origin_m": [round(float(v), 6) for v in geometry.origin],
            "head_radius_m": round(geometry.head_radius, 6),
        },
        "tasks": {
            "rest": "1/f background and posterior alpha, no stimuli",
            "auditory": "tones to the left (code 1) or right (code 2) ear",
            "somatosensory": "left (code 3) or right (code 4) median-nerve stimulation",
        },
        "event_id": dict(EVENT_ID),
        "stim_channel": STIM_CHANNEL,
        "group_effect": {
            "definition": {
                "habituation": "fraction of evoked amplitude lost from the first to the last "
                "stimulus of a task run: response k of n is scaled by 1 - habituation * k / (n - 1)"
                f" (times a trial factor 1 + {TRIAL_AMPLITUDE_SD} * N(0, 1))",
                "alpha_peak_hz": "centre of the posterior alpha peak",
            },
            "parameters": {
                name: {
                    "control_mean": values["control_mean"],
                    "migraine_mean": values["control_mean"]
                    + config.effect_size * values["migraine_shift"],
                    "sd": values["sd"],
                }
                for name, values in GROUP_EFFECT.items()
            },
            "effect_size": config.effect_size,
        },
        "conditions": _rounded(_condition_truth(sources, geometry, config)),
        "subjects": [_rounded(asdict(subject)) for subject in subjects],
    }


def _is_staging(entry: Path) -> bool:
    """A folder where a cohort is being written (or was, by a run that was killed)."""
    return entry.name.startswith(_STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink()


def _foreign_entries(root: Path, skip: frozenset[Path] = frozenset()) -> list[str]:
    """Paths (relative to ``root``) of what this simulation did not write there."""
    foreign = []
    for entry in sorted(root.iterdir()):
        name = entry.name
        if entry in skip or _is_staging(entry):
            continue
        if entry.is_symlink():
            foreign.append(name)
        elif name in _ROOT_FILES and entry.is_file():
            continue
        elif name == GROUND_TRUTH_RELPATH.parent.name and entry.is_dir():
            for child in sorted(entry.iterdir()):
                if child != root / GROUND_TRUTH_RELPATH or child.is_symlink() or child.is_dir():
                    foreign.append(f"{name}/{child.name}")
        elif name.startswith("sub-") and entry.is_dir():
            for folder, subfolders, filenames in os.walk(entry):
                here = Path(folder)
                for child in sorted(subfolders + filenames):
                    path = here / child
                    relative = path.relative_to(root).as_posix()
                    if path.is_symlink() or (
                        path.is_file() and not _SUBJECT_FILE.fullmatch(relative)
                    ):
                        foreign.append(relative)
        else:
            foreign.append(name)
    return foreign


def _is_simulated_cohort(root: Path) -> bool:
    path = root / GROUND_TRUTH_RELPATH
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(truth, dict) and str(truth.get("description", "")).startswith(
        GROUND_TRUTH_DESCRIPTION
    )


def _check_replaceable(root: Path, skip: frozenset[Path] = frozenset()) -> None:
    """Raise ``FileExistsError`` unless ``root`` holds only a cohort this simulation wrote."""
    if all(entry in skip or _is_staging(entry) for entry in root.iterdir()):
        return
    if not _is_simulated_cohort(root):
        raise FileExistsError(
            f"output {str(root)!r} is not empty and holds no {GROUND_TRUTH_RELPATH.as_posix()} "
            "written by this simulation; overwrite=True (--overwrite) only replaces a cohort "
            "simulated there before. Choose an empty folder, or remove its contents yourself"
        )
    foreign = _foreign_entries(root, skip)
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise FileExistsError(
            f"output {str(root)!r} holds a simulated cohort but also files this simulation did "
            f"not write ({shown}{more}); overwrite=True (--overwrite) does not delete them. "
            "Move them elsewhere or choose another folder"
        )


def _swap_in(root: Path, staging: Path) -> None:
    """Replace what ``root`` holds (a previous cohort, if any) by the contents of ``staging``.

    The previous cohort is moved aside first and deleted only once the new one is in place;
    should a move fail, what was moved goes back.
    """
    # again: files may have appeared while the cohort was written
    _check_replaceable(root, frozenset({staging}))
    retired = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}old-", dir=root))
    skip = frozenset({staging, retired})
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for entry in sorted(root.iterdir()):
            if entry not in skip:
                os.replace(entry, retired / entry.name)
                moved_out.append(entry.name)
        for entry in sorted(staging.iterdir()):
            os.replace(entry, root / entry.name)
            moved_in.append(entry.name)
    except BaseException:
        for name in reversed(moved_in):
            os.replace(root / name, staging / name)
        for name in reversed(moved_out):
            os.replace(retired / name, root / name)
        shutil.rmtree(retired, ignore_errors=True)
        raise
    staging.rmdir()
    shutil.rmtree(retired)


def _write_cohort(
    root: Path,
    config: CohortConfig,
    geometry: SensorGeometry,
    sources: PlacedSources,
    subjects: list[SubjectParameters],
    progress: bool,
) -> list[Path]:
    """Write the recordings, participants table and ground truth under ``root``."""
    files: list[Path] = []
    # mne-bids names the maker of a FIF file's system (Elekta) whatever the sensor array; no
    # device recorded these data, so the sidecars say what they are
    equipment = {
        "Manufacturer": "n/a",
        "ManufacturersModelName": f"simulated: {describe_sensor_array(geometry)['system']}",
    }
    for index, params in enumerate(
        tqdm(subjects, desc="simulating subjects", disable=not progress)
    ):
        for task_index, task in enumerate(TASKS):
            raw, events = simulate_run(
                task, params, sources, geometry, config, _rng(config, index + 1, task_index + 1)
            )
            bids_path = mne_bids.BIDSPath(
                subject=params.participant_id.removeprefix("sub-"),
                task=task,
                datatype="meg",
                extension=".fif",
                root=root,
            )
            event_id = {k: v for k, v in EVENT_ID.items() if k.startswith(f"{task}/")}
            with _kit_chpi_workaround(raw.info):
                mne_bids.write_raw_bids(
                    raw,
                    bids_path,
                    events=events if len(events) else None,
                    event_id=event_id or None,
                    format="FIF",
                    allow_preload=True,
                    overwrite=True,
                    verbose="error",
                )
            mne_bids.update_sidecar_json(
                bids_path.copy().update(suffix="meg", extension=".json"), equipment, verbose="error"
            )
            _scrub_fif_ids(bids_path.fpath)
            files.append(bids_path.fpath)
    _write_participants(root, subjects)
    truth = _ground_truth(config, geometry, sources, subjects)
    _atomic_write_text(root / GROUND_TRUTH_RELPATH, json.dumps(truth, indent=2) + "\n")
    return files


def simulate_cohort(
    output: str | Path,
    config: CohortConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    **options: object,
) -> CohortResult:
    """Write a simulated patient/control MEG cohort as a BIDS dataset.

    Parameters
    ----------
    output : str | pathlib.Path
        BIDS root to create.
    config : CohortConfig | None
        Cohort options; ``None`` builds one from ``options`` (the :class:`CohortConfig` fields,
        e.g. ``n_subjects=4, seed=1, effect_size=0.0``).
    overwrite : bool
        Replace a cohort this simulation wrote at ``output`` before (every file of it, so none
        of a larger earlier cohort stays); otherwise a non-empty ``output`` is an error. A
        folder that holds anything else is never deleted: it is an error even with ``overwrite``.
    progress : bool
        Show a progress bar over subjects.
    **options
        :class:`CohortConfig` fields, used when ``config`` is None.

    Returns
    -------
    result : CohortResult
        The root, the ground-truth path, the planted parameters and the written files.

    Raises
    ------
    ValueError
        For invalid options (see :class:`CohortConfig`), an unreadable geometry file or one
        without MEG sensors.
    FileNotFoundError
        If the geometry file does not exist.
    FileExistsError
        If ``output`` is not empty and ``overwrite`` is False, or if, with ``overwrite``, it
        holds anything but a cohort this simulation wrote.

    Notes
    -----
    Layout: ``sub-XX/meg/sub-XX_task-{rest,auditory,somatosensory}_meg.fif`` with their
    sidecars, ``participants.tsv`` (``participant_id``, ``group``) and
    ``derivatives/ground_truth.json``. Event codes: 1 left tone, 2 right tone, 3 left median
    nerve, 4 right median nerve (channel ``STI 014`` and ``*_events.tsv``). The forward model is
    computed once for the cohort. No measurement date, machine id or personal data is written;
    the ground truth describes the sensor array by its system and sensor counts, not by the
    name of the file it came from.

    The cohort is written into a hidden folder inside ``output`` and moved into place only
    when complete, so a failed or interrupted run leaves the previous cohort (if any) as it
    was; the previous cohort is deleted once the new one is in place.
    """
    if config is None:
        config = CohortConfig(**options)  # type: ignore[arg-type]
    elif options:
        raise ValueError(f"pass either config or options, not both; got options {sorted(options)}")
    root = Path(output)
    if root.exists() and not root.is_dir():
        raise ValueError(f"output {str(root)!r} exists and is not a folder; expected a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output {str(root)!r} is not empty; pass overwrite=True (--overwrite) to "
                "replace a cohort simulated there before"
            )
        _check_replaceable(root)  # before minutes of simulation, not after
    geometry = load_geometry(config.geometry, sfreq=config.sfreq)
    sources = place_sources(geometry, _rng(config, 0, 0), config.n_background_sources)
    groups = assign_groups(config)
    subjects = [draw_subject_parameters(config, index, group) for index, group in enumerate(groups)]
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
    try:
        staged = _write_cohort(staging, config, geometry, sources, subjects, progress)
        _swap_in(root, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()  # only if nothing else appeared there meanwhile
        raise
    files = [root / path.relative_to(staging) for path in staged]
    ground_truth_path = root / GROUND_TRUTH_RELPATH
    logger.info("Wrote %d subjects (%d recordings) to %s", len(subjects), len(files), root)
    return CohortResult(
        root=root, ground_truth_path=ground_truth_path, subjects=subjects, files=files
    )
