"""Cut preprocessed MEG into windows: fixed-length (resting state) or locked to events.

Separate from preprocessing so the same preprocessed recording can be windowed both ways. Windows
are described by their start samples; the samples themselves are sliced only when a batch is
written, so a recording is never held twice in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mne
import numpy as np

from ..modeling.configuration_megfm import SENSOR_TYPES
from .errors import EventNotFoundError, NoWindowsError, RecordingTooShortError

logger = logging.getLogger(__name__)

#: annotation descriptions starting with these (case-insensitive) mark data that is never
#: windowed: MNE's ``reject_by_annotation`` drops epochs overlapping ``BAD*`` annotations (such as
#: ``BAD_movement`` or the ``BAD boundary`` between concatenated recordings), and its filters treat
#: ``EDGE*`` annotations as discontinuities
BAD_ANNOTATION_PREFIXES = ("bad", "edge")
#: the annotations :func:`mne.concatenate_raws` puts at each boundary between joined pieces
BOUNDARY_ANNOTATIONS = ("BAD boundary", "EDGE boundary")


@dataclass
class WindowPlan:
    """Where the windows of one recording start, and what they are.

    Attributes
    ----------
    starts : np.ndarray of int, shape (n_windows,)
        First sample of each window, in the preprocessed data.
    onsets_s : np.ndarray of float, shape (n_windows,)
        Time of each window's first sample in seconds, from the start of the recording
        (continuous data) or from the event (epochs, evoked responses).
    events : list of str
        Event name of each window (``""`` for fixed-length windows).
    n_dropped_at_edges : int
        Event-locked windows that did not fit inside the recording.
    rejected : dict
        Windows rejected by peak-to-peak amplitude, per sensor type name.
    n_dropped_by_annotation : int
        Windows dropped because they overlap a ``BAD*`` or ``EDGE*`` annotation.
    """

    starts: np.ndarray
    onsets_s: np.ndarray
    events: list[str]
    n_dropped_at_edges: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    n_dropped_by_annotation: int = 0

    def __len__(self) -> int:
        return len(self.starts)

    def select(self, keep: np.ndarray) -> WindowPlan:
        """Return the plan restricted to windows where ``keep`` is True."""
        return WindowPlan(
            starts=self.starts[keep],
            onsets_s=self.onsets_s[keep],
            events=[e for e, k in zip(self.events, keep, strict=True) if k],
            n_dropped_at_edges=self.n_dropped_at_edges,
            rejected=dict(self.rejected),
            n_dropped_by_annotation=self.n_dropped_by_annotation,
        )


def window_samples(window_seconds: float, sfreq: float, patch_length: int) -> int:
    """Return the window length in samples: ``window_seconds * sfreq``, a whole number of patches.

    Raises
    ------
    ValueError
        When the window is not a whole number of patches at ``sfreq``.
    """
    n = int(round(window_seconds * sfreq))
    if n <= 0 or n % patch_length or not np.isclose(n / sfreq, window_seconds, atol=0.5 / sfreq):
        raise ValueError(
            f"window_seconds={window_seconds} s at sfreq={sfreq} Hz is {window_seconds * sfreq:g} "
            f"samples; expected a positive whole number of patches of patch_length={patch_length}"
        )
    return n


def fixed_length_windows(
    n_times: int,
    n_samples: int,
    *,
    overlap: float,
    sfreq: float,
    path: str | Path | None = None,
) -> WindowPlan:
    """Plan fixed-length windows over a continuous recording.

    Parameters
    ----------
    n_times : int
        Samples in the recording.
    n_samples : int
        Samples per window.
    overlap : float
        Fraction of a window shared with the next, in ``[0, 1)``.
    sfreq : float
        Sampling rate in Hz.
    path : str | Path | None
        The recording, named in errors.

    Returns
    -------
    plan : WindowPlan

    Raises
    ------
    RecordingTooShortError
        When not even one window fits.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap}; expected a fraction in [0, 1)")
    if n_times < n_samples:
        raise RecordingTooShortError(
            path,
            f"recording has {n_times} samples ({n_times / sfreq:.3f} s at {sfreq:g} Hz) after "
            f"preprocessing; one window needs {n_samples} samples ({n_samples / sfreq:.3f} s)",
        )
    step = max(1, int(round(n_samples * (1.0 - overlap))))
    starts = np.arange(0, n_times - n_samples + 1, step, dtype=np.int64)
    return WindowPlan(starts=starts, onsets_s=starts / sfreq, events=[""] * len(starts))


def find_events(
    raw: mne.io.BaseRaw,
    event_id: Mapping[str, int] | Sequence[str] | None,
    *,
    stim_channel: str | Sequence[str] | None = None,
    path: str | Path | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Find events in annotations or on stim channels.

    Annotations are used when any of their descriptions is requested; otherwise events are read
    from the stim channel(s) with :func:`mne.find_events`.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The original recording (stim channels still present).
    event_id : Mapping | Sequence | None
        ``{name: code}`` for stim-channel events or annotations, or a list of annotation
        descriptions. ``None`` takes every annotation description except ``BAD*`` and
        ``EDGE*`` ones (bad segments and boundaries), or every stim code (named by its number).
    stim_channel : str | Sequence | None
        Stim channel(s); MNE's default when ``None``.
    path : str | Path | None
        The recording, named in errors.

    Returns
    -------
    times : np.ndarray of float
        Event times in seconds from the start of the recording (``first_samp`` excluded).
    names : list of str
        Event name of each time.

    Raises
    ------
    EventNotFoundError
        When none of the requested events occurs.
    """
    wanted = _normalise_event_id(event_id)
    descriptions = list(raw.annotations.description)
    onsets = annotation_onsets(raw)
    if wanted is None:
        # bad segments and boundaries are not events, however many there are
        candidates = [i for i, d in enumerate(descriptions) if not is_bad_annotation(d)]
    else:
        candidates = [i for i, d in enumerate(descriptions) if d in wanted]
    if candidates:
        times = onsets[candidates]
        found = [descriptions[i] for i in candidates]
    else:
        times, found = _stim_events(raw, wanted, stim_channel, path)
    if len(times) == 0:
        available = sorted(set(descriptions)) or "none"
        raise EventNotFoundError(
            path,
            f"none of the requested events {sorted(wanted) if wanted else 'any'} was found "
            f"(annotations present: {available}; stim events searched on "
            f"{stim_channel or 'the default stim channel'})",
        )
    order = np.argsort(times, kind="stable")
    return np.asarray(times, dtype=np.float64)[order], [found[i] for i in order]


def annotation_onsets(raw: mne.io.BaseRaw) -> np.ndarray:
    """Return the onsets of ``raw.annotations`` in seconds from the first sample of the data.

    MNE stores annotation onsets counting from ``first_samp = 0`` of the acquisition, whether or
    not the annotations have an ``orig_time`` (see ``mne.annotations._sync_onset``), so
    ``raw.first_time`` is subtracted in both cases.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording.

    Returns
    -------
    onsets : np.ndarray of float, shape (n_annotations,)
    """
    return np.asarray(raw.annotations.onset, dtype=np.float64) - raw.first_time


def is_bad_annotation(description: str) -> bool:
    """Return True when an annotation marks data not to window (see
    :data:`BAD_ANNOTATION_PREFIXES`)."""
    return description.lower().startswith(BAD_ANNOTATION_PREFIXES)


def bad_segments(raw: mne.io.BaseRaw) -> np.ndarray:
    """Return the spans of the ``BAD*`` and ``EDGE*`` annotations of a recording.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording.

    Returns
    -------
    segments : np.ndarray of float, shape (n_segments, 2)
        Start and end of each span in seconds from the first sample of the data; a boundary
        between discontinuous pieces of data is a span of zero duration.
    """
    bad = np.array([is_bad_annotation(d) for d in raw.annotations.description], dtype=bool)
    onsets = annotation_onsets(raw)[bad]
    durations = np.asarray(raw.annotations.duration, dtype=np.float64)[bad]
    return np.stack([onsets, onsets + durations], axis=1)


def drop_windows_in_bad_segments(
    plan: WindowPlan,
    segments: np.ndarray,
    *,
    n_samples: int,
    sfreq: float,
    path: str | Path | None = None,
) -> WindowPlan:
    """Drop the windows that overlap a bad segment, as MNE's ``reject_by_annotation`` does.

    A window from ``t0`` to ``t1 = t0 + n_samples / sfreq`` overlaps a segment from ``a`` to
    ``b`` when ``a < t1`` and ``b > t0``: a window may start or end on a boundary, but not cross
    it.

    Parameters
    ----------
    plan : WindowPlan
        Windows of continuous data (``starts`` in samples at ``sfreq`` from the first sample).
    segments : np.ndarray, shape (n_segments, 2)
        Bad spans in seconds (see :func:`bad_segments`).
    n_samples : int
        Samples per window.
    sfreq : float
        Sampling rate of ``plan.starts`` in Hz.
    path : str | Path | None
        The recording, named in errors.

    Returns
    -------
    plan : WindowPlan
        The windows left, with ``n_dropped_by_annotation`` set.

    Raises
    ------
    NoWindowsError
        When every window overlaps a bad segment.
    """
    if len(segments) == 0 or len(plan) == 0:
        return plan
    begin = plan.starts[:, None] / sfreq
    end = (plan.starts[:, None] + n_samples) / sfreq
    overlaps = (segments[None, :, 0] < end) & (segments[None, :, 1] > begin)
    keep = ~overlaps.any(axis=1)
    n_dropped = int((~keep).sum())
    if not n_dropped:
        return plan
    if not keep.any():
        raise NoWindowsError(
            path,
            f"all {len(plan)} windows ({n_samples / sfreq:.3f} s each) overlap BAD or EDGE "
            f"annotations ({len(segments)} bad segments or boundaries); expected some data "
            "outside them",
        )
    logger.info(
        "dropped %d of %d windows overlapping BAD or EDGE annotations", n_dropped, len(plan)
    )
    kept = plan.select(keep)
    kept.n_dropped_by_annotation = plan.n_dropped_by_annotation + n_dropped
    return kept


def _normalise_event_id(
    event_id: Mapping[str, int] | Sequence[str] | None,
) -> dict[str, int | None] | None:
    if event_id is None:
        return None
    if isinstance(event_id, Mapping):
        return {str(k): int(v) for k, v in event_id.items()}
    return {str(name): None for name in event_id}


def _stim_events(raw, wanted, stim_channel, path) -> tuple[np.ndarray, list[str]]:
    if not mne.pick_types(raw.info, stim=True, exclude=[]).size and stim_channel is None:
        return np.array([]), []
    try:
        events = mne.find_events(
            raw, stim_channel=stim_channel, shortest_event=1, initial_event=True, verbose="error"
        )
    except ValueError as err:
        raise EventNotFoundError(path, f"cannot read stim events ({err})") from err
    if wanted is None:
        code_to_name = {int(c): str(int(c)) for c in np.unique(events[:, 2])}
    else:
        code_to_name = {
            int(code if code is not None else _as_int(name)): name
            for name, code in wanted.items()
            if code is not None or _as_int(name) is not None
        }
    keep = np.isin(events[:, 2], list(code_to_name))
    events = events[keep]
    times = (events[:, 0] - raw.first_samp) / raw.info["sfreq"]
    return times, [code_to_name[int(c)] for c in events[:, 2]]


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def event_locked_windows(
    event_times: np.ndarray,
    event_names: Sequence[str],
    *,
    tmin: float,
    n_samples: int,
    sfreq: float,
    n_times: int,
    path: str | Path | None = None,
) -> WindowPlan:
    """Plan one window per event, starting ``tmin`` seconds from it.

    Parameters
    ----------
    event_times : np.ndarray
        Event times in seconds from the start of the recording.
    event_names : sequence of str
        Name of each event.
    tmin : float
        Start of the window relative to the event, in seconds (negative: before the event).
    n_samples : int
        Samples per window (``tmax = tmin + n_samples / sfreq``).
    sfreq : float
        Sampling rate of the preprocessed data in Hz.
    n_times : int
        Samples in the preprocessed data.
    path : str | Path | None
        Named in errors.

    Returns
    -------
    plan : WindowPlan
        ``onsets_s`` is the time of each window's first sample (event time + ``tmin``).

    Raises
    ------
    RecordingTooShortError
        When no window fits inside the recording.
    """
    starts = np.round((np.asarray(event_times) + tmin) * sfreq).astype(np.int64)
    inside = (starts >= 0) & (starts + n_samples <= n_times)
    n_dropped = int((~inside).sum())
    if n_dropped:
        logger.info("%d event-locked windows fall outside the recording and are dropped", n_dropped)
    if not inside.any():
        raise RecordingTooShortError(
            path,
            f"none of the {len(starts)} event-locked windows ({n_samples / sfreq:.3f} s from "
            f"tmin={tmin:g} s) fits inside the recording ({n_times / sfreq:.3f} s)",
        )
    starts = starts[inside]
    names = [n for n, k in zip(event_names, inside, strict=True) if k]
    return WindowPlan(
        starts=starts, onsets_s=starts / sfreq, events=names, n_dropped_at_edges=n_dropped
    )


def peak_to_peak_rejection(
    windows: np.ndarray,
    types: np.ndarray,
    mask: np.ndarray,
    thresholds: Mapping[str, float] | None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Reject windows whose peak-to-peak amplitude exceeds a threshold on any good sensor.

    Parameters
    ----------
    windows : np.ndarray, shape (n_windows, n_sensors, n_samples)
        Windows in the units the thresholds are given in.
    types : np.ndarray of int, shape (n_sensors,)
        Sensor type codes.
    mask : np.ndarray of bool, shape (n_sensors,)
        Good sensors; bad ones never cause a rejection.
    thresholds : Mapping | None
        Largest allowed peak-to-peak amplitude per sensor type name; a type absent from the
        mapping (or ``None``) is not checked.

    Returns
    -------
    keep : np.ndarray of bool, shape (n_windows,)
    rejected : dict
        Windows rejected per sensor type name (a window is counted under every type that
        exceeded its threshold).
    """
    keep = np.ones(len(windows), dtype=bool)
    rejected: dict[str, int] = {}
    if not thresholds or len(windows) == 0:
        return keep, rejected
    ptp = np.ptp(windows, axis=-1)
    for code, name in enumerate(SENSOR_TYPES):
        limit = thresholds.get(name)
        sensors = (types == code) & mask
        if limit is None or not sensors.any():
            continue
        over = (ptp[:, sensors] > limit).any(axis=1)
        if over.any():
            rejected[name] = int(over.sum())
        keep &= ~over
    return keep, rejected


__all__ = [
    "BAD_ANNOTATION_PREFIXES",
    "BOUNDARY_ANNOTATIONS",
    "WindowPlan",
    "annotation_onsets",
    "bad_segments",
    "drop_windows_in_bad_segments",
    "event_locked_windows",
    "find_events",
    "fixed_length_windows",
    "is_bad_annotation",
    "peak_to_peak_rejection",
    "window_samples",
]
