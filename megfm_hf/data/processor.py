"""``MEGProcessor``: from an MNE recording (or a file) to model inputs.

The processor follows the transformers feature-extractor pattern: it owns every preprocessing
parameter, ``save_pretrained`` writes them to ``preprocessor_config.json`` next to the model
weights and ``from_pretrained`` reads them back, so inference sees exactly the preprocessing the
model was trained on. Dataset building (:mod:`megfm_hf.data.builder`) and inference both go through
:meth:`MEGProcessor.process`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mne
import numpy as np
from transformers import BatchFeature, FeatureExtractionMixin

from ..modeling.configuration_megfm import SENSOR_TYPES
from .anonymize import anonymize as anonymize_recording
from .errors import NoWindowsError, RecordingTooShortError
from .preprocessing import (
    DEFAULT_SCALINGS,
    PreprocessedData,
    condition_name,
    preprocess_raw,
    preprocess_segments,
)
from .readers import read_recording
from .sensors import SensorArray
from .windowing import (
    WindowPlan,
    bad_segments,
    drop_windows_in_bad_segments,
    event_locked_windows,
    find_events,
    fixed_length_windows,
    peak_to_peak_rejection,
    window_samples,
)

logger = logging.getLogger(__name__)

#: default peak-to-peak rejection thresholds, in the units of ``input_values`` (pT, 100 fT/cm);
#: generous on purpose: they remove gross artifacts (movement, SQUID jumps), not brain activity
DEFAULT_REJECT: dict[str, float] = {
    "magnetometer": 20.0,  # 20 pT
    "planar_gradiometer": 80.0,  # 8000 fT/cm
    "axial_gradiometer": 20.0,  # 20 pT
    "opm": 50.0,  # 50 pT: OPMs are noisier and less shielded
}

MODEL_INPUT_NAMES = ["input_values", "sensor_positions", "sensor_types", "sensor_mask"]

Source = str | Path | mne.io.BaseRaw | mne.BaseEpochs | mne.Evoked | Sequence[mne.Evoked]


@dataclass
class ProcessedRecording:
    """Windows of one recording, sliced lazily from the preprocessed data.

    Attributes
    ----------
    preprocessed : PreprocessedData
        Data at the target rate and in model units.
    plan : WindowPlan
        Window starts, onsets and event names (after rejection).
    segments : np.ndarray of int | None
        For epochs and evoked responses, the segment of each window; ``None`` for continuous data.
    n_samples : int
        Samples per window.
    n_candidates : int
        Windows before peak-to-peak rejection.
    """

    preprocessed: PreprocessedData
    plan: WindowPlan
    segments: np.ndarray | None
    n_samples: int
    n_candidates: int

    @property
    def sensors(self) -> SensorArray:
        """Sensor types and geometry."""
        return self.preprocessed.sensors

    @property
    def sensor_mask(self) -> np.ndarray:
        """Good sensors (``False`` for bad ones)."""
        return self.preprocessed.mask

    def __len__(self) -> int:
        return len(self.plan)

    def windows(self, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Return windows as one array.

        Parameters
        ----------
        indices : array-like of int | None
            Which windows (all when ``None``).

        Returns
        -------
        windows : np.ndarray, shape (n, n_sensors, n_samples), float32
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        return _slice_windows(
            self.preprocessed.data,
            self.plan.starts[indices],
            None if self.segments is None else self.segments[indices],
            self.n_samples,
        )

    def iter_batches(self, batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, windows)`` in batches, holding one batch of windows at a time."""
        for begin in range(0, len(self), batch_size):
            indices = np.arange(begin, min(begin + batch_size, len(self)))
            yield indices, self.windows(indices)


def _slice_windows(data, starts, segments, n_samples) -> np.ndarray:
    offsets = np.arange(n_samples)
    if segments is None:
        # (n_sensors, n_windows, n_samples) -> (n_windows, n_sensors, n_samples)
        return np.ascontiguousarray(data[:, starts[:, None] + offsets].transpose(1, 0, 2))
    return np.stack(
        [data[seg, :, s : s + n_samples] for seg, s in zip(segments, starts, strict=True)]
    )


class MEGProcessor(FeatureExtractionMixin):
    r"""Turn MEG recordings into model inputs.

    Parameters
    ----------
    sfreq : float
        Target sampling rate in Hz (the model's ``sampling_rate``).
    patch_length : int
        Samples per model patch; windows are a whole number of patches.
    l_freq : float | None
        High-pass edge in Hz (``None``: no high-pass).
    h_freq : float | None
        Low-pass edge in Hz (``None``: none); capped at ``0.4 * sfreq`` so that it stays below
        the Nyquist frequency of the target rate. A recording whose own Nyquist frequency is at
        or below ``h_freq`` is refused (:class:`~megfm_hf.data.errors.SamplingRateError`).
    line_freq : float | None
        Power-line frequency in Hz for the notch filter; ``None`` takes ``info["line_freq"]``,
        or, when the recording does not set it, 50 or 60 Hz as detected from the spectrum of its
        MEG sensors (50 Hz, with a warning, when neither shows clearly).
    notch : bool
        Apply the notch filter (at ``line_freq`` and its harmonics up to the band).
    window_seconds : float
        Window length in seconds, for fixed-length and event-locked windows alike.
    overlap : float
        Fraction of a fixed-length window shared with the next, in ``[0, 1)``.
    tmin : float
        Start of an event-locked window relative to its event, in seconds (``tmax`` is
        ``tmin + window_seconds``).
    event_id : dict | list | None
        Events for event-locked windows: ``{name: stim code}`` or annotation descriptions.
    stim_channel : str | list | None
        Stim channel(s) to read events from (MNE's default when ``None``).
    scalings : dict | None
        Factor per sensor type name from SI units to model units; defaults to
        :data:`~megfm_hf.data.preprocessing.DEFAULT_SCALINGS` (magnetometers, axial gradiometers,
        OPMs: T x 1e12 = pT; planar gradiometers: T/m x 1e11 = 100 fT/cm).
    scaling_mode : str
        ``"physical"`` (fixed factors) or ``"robust"`` (per recording and sensor type; see
        :mod:`megfm_hf.data.preprocessing`).
    reject : dict | None
        Peak-to-peak rejection thresholds per sensor type name, in model units (``None``: no
        rejection). Defaults to :data:`DEFAULT_REJECT`.
    detect_bads : bool
        Mask sensors detected as flat or noisy, in addition to ``info["bads"]``, for continuous
        data, epochs and evoked responses alike. Detection runs on the MEG sensors in SI units
        before filtering; for epochs and evoked responses on all segments together (every epoch,
        or every condition), a detected sensor being masked in all of them. For evoked responses
        the flat thresholds are divided by ``sqrt(nave)`` (the noise of an average of ``nave``
        trials is that much smaller; see
        :func:`~megfm_hf.data.preprocessing.preprocess_segments`); the noisy check is the same,
        since the evoked response, spread over many sensors, leaves good sensors of real
        averages well below the default z-score.
    flat_thresholds : dict | None
        Per-sensor standard deviation below which a sensor is flat, in T or T/m, per type name,
        for single trials (defaults:
        :data:`~megfm_hf.data.preprocessing.DEFAULT_FLAT_THRESHOLDS`).
    noisy_zscore : float | None
        Robust z-score of a sensor's log standard deviation above which it is noisy (``None``
        disables the check).
    anonymize : bool
        Anonymize recordings when they are read (:func:`megfm_hf.data.anonymize.anonymize`).
    keep_meas_date : bool
        Keep measurement dates when anonymizing.
    **kwargs
        Passed to :class:`transformers.FeatureExtractionMixin`.

    Notes
    -----
    Outputs per window: ``input_values`` float32 (sensors, samples); ``sensor_positions`` float32
    (sensors, 6: position in metres and unit orientation, head coordinates when a device-to-head
    transform exists); ``sensor_types`` int64 (indices of ``SENSOR_TYPES``); ``sensor_mask`` bool
    (``False`` for bad sensors, whose samples are zero).
    """

    model_input_names = MODEL_INPUT_NAMES

    def __init__(
        self,
        sfreq: float = 250.0,
        patch_length: int = 25,
        l_freq: float | None = 0.5,
        h_freq: float | None = 100.0,
        line_freq: float | None = None,
        notch: bool = True,
        window_seconds: float = 4.0,
        overlap: float = 0.0,
        tmin: float = -0.2,
        event_id: Mapping[str, int] | Sequence[str] | None = None,
        stim_channel: str | Sequence[str] | None = None,
        scalings: Mapping[str, float] | None = None,
        scaling_mode: str = "physical",
        reject: Mapping[str, float] | None = DEFAULT_REJECT,
        detect_bads: bool = True,
        flat_thresholds: Mapping[str, float] | None = None,
        noisy_zscore: float | None = 6.0,
        anonymize: bool = True,
        keep_meas_date: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if sfreq <= 0:
            raise ValueError(f"MEGProcessor: sfreq={sfreq} Hz; expected a positive rate")
        if int(patch_length) <= 0:
            raise ValueError(f"MEGProcessor: patch_length={patch_length}; expected > 0")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"MEGProcessor: overlap={overlap}; expected a fraction in [0, 1)")
        if scaling_mode not in ("physical", "robust"):
            raise ValueError(
                f"MEGProcessor: scaling_mode={scaling_mode!r}; expected 'physical' or 'robust'"
            )
        scalings = {**DEFAULT_SCALINGS, **(scalings or {})}
        unknown = set(scalings) - set(SENSOR_TYPES)
        if unknown:
            raise ValueError(
                f"MEGProcessor: scalings has unknown sensor types {sorted(unknown)}; "
                f"expected names from {SENSOR_TYPES}"
            )
        if h_freq is not None and h_freq > 0.4 * sfreq:
            logger.warning(
                "h_freq=%g Hz is too close to the Nyquist frequency of sfreq=%g Hz; using %g Hz",
                h_freq,
                sfreq,
                0.4 * sfreq,
            )
            h_freq = 0.4 * sfreq
        if l_freq is not None and h_freq is not None and l_freq >= h_freq:
            raise ValueError(f"MEGProcessor: l_freq={l_freq} Hz must be below h_freq={h_freq} Hz")
        self.sfreq = float(sfreq)
        self.patch_length = int(patch_length)
        self.l_freq = None if l_freq is None else float(l_freq)
        self.h_freq = None if h_freq is None else float(h_freq)
        self.line_freq = None if line_freq is None else float(line_freq)
        self.notch = bool(notch)
        self.window_seconds = float(window_seconds)
        self.overlap = float(overlap)
        self.tmin = float(tmin)
        self.event_id = (
            None
            if event_id is None
            else dict(event_id)
            if isinstance(event_id, Mapping)
            else list(event_id)
        )
        self.stim_channel = stim_channel
        self.scalings = {name: float(scalings[name]) for name in SENSOR_TYPES}
        self.scaling_mode = scaling_mode
        self.reject = None if reject is None else {k: float(v) for k, v in reject.items()}
        self.detect_bads = bool(detect_bads)
        self.flat_thresholds = None if flat_thresholds is None else dict(flat_thresholds)
        self.noisy_zscore = None if noisy_zscore is None else float(noisy_zscore)
        self.anonymize = bool(anonymize)
        self.keep_meas_date = bool(keep_meas_date)
        _ = self.window_samples  # validates window_seconds against sfreq and patch_length

    @classmethod
    def from_model_config(cls, config: Any, **kwargs: Any) -> MEGProcessor:
        """Build a processor whose rate and patch length match a ``MEGConfig``.

        Parameters
        ----------
        config : MEGConfig
            Model configuration (``sampling_rate`` in Hz, ``patch_length`` in samples).
        **kwargs
            Other processor parameters.
        """
        return cls(sfreq=config.sampling_rate, patch_length=config.patch_length, **kwargs)

    def check_model_config(self, config: Any) -> None:
        """Raise if this processor's rate or patch length differ from a ``MEGConfig``'s."""
        if (
            not np.isclose(config.sampling_rate, self.sfreq)
            or config.patch_length != self.patch_length
        ):
            raise ValueError(
                f"processor (sfreq={self.sfreq} Hz, patch_length={self.patch_length}) does not "
                f"match the model (sampling_rate={config.sampling_rate} Hz, "
                f"patch_length={config.patch_length})"
            )

    @property
    def window_samples(self) -> int:
        """Samples per window (a whole number of patches)."""
        return window_samples(self.window_seconds, self.sfreq, self.patch_length)

    @property
    def tmax(self) -> float:
        """End of an event-locked window relative to its event, in seconds."""
        return self.tmin + self.window_samples / self.sfreq

    # -- reading and preprocessing ------------------------------------------------------------

    def read(
        self, path: str | Path, *, reader_kwargs: Mapping[str, Any] | None = None
    ) -> mne.io.BaseRaw | list[mne.Evoked]:
        """Read a recording (any vendor, see :func:`~megfm_hf.data.readers.read_recording`) and
        anonymize it when ``self.anonymize``."""
        recording = read_recording(path, reader_kwargs=reader_kwargs)
        if self.anonymize:
            for inst in recording if isinstance(recording, list) else [recording]:
                anonymize_recording(inst, keep_meas_date=self.keep_meas_date)
        return recording

    def preprocess(
        self,
        inst: mne.io.BaseRaw | mne.BaseEpochs | mne.Evoked | Sequence[mne.Evoked],
        *,
        path: str | Path | None = None,
    ) -> PreprocessedData:
        """Preprocess a recording with this processor's parameters.

        Evoked responses given as a list (one per condition) are stacked as segments and scaled
        together. The notch frequency of continuous data is ``self.line_freq`` when set, else
        ``info["line_freq"]``, else detected from the data (see
        :func:`~megfm_hf.data.preprocessing.detect_line_freq`); the value used is
        ``PreprocessedData.line_freq``.
        """
        if isinstance(inst, mne.io.BaseRaw):
            line_freq = self.line_freq or inst.info.get("line_freq") or "auto"
            return preprocess_raw(
                inst,
                sfreq=self.sfreq,
                l_freq=self.l_freq,
                h_freq=self.h_freq,
                line_freq=line_freq if self.notch else None,
                scalings=self.scalings,
                scaling_mode=self.scaling_mode,
                detect_bads=self.detect_bads,
                flat_thresholds=self.flat_thresholds,
                noisy_zscore=self.noisy_zscore,
                path=path,
            )
        return preprocess_segments(
            inst,
            sfreq=self.sfreq,
            h_freq=self.h_freq,
            scalings=self.scalings,
            scaling_mode=self.scaling_mode,
            detect_bads=self.detect_bads,
            flat_thresholds=self.flat_thresholds,
            noisy_zscore=self.noisy_zscore,
            path=path,
        )

    def plan_windows(
        self,
        inst: mne.io.BaseRaw | mne.BaseEpochs | mne.Evoked | Sequence[mne.Evoked],
        preprocessed: PreprocessedData,
        *,
        event_id: Mapping[str, int] | Sequence[str] | None = None,
        mode: str | None = None,
        path: str | Path | None = None,
    ) -> tuple[WindowPlan, np.ndarray | None]:
        """Plan the windows of a preprocessed recording.

        Parameters
        ----------
        inst : Raw | Epochs | Evoked | list of Evoked
            The original recording (events are read from it).
        preprocessed : PreprocessedData
            Its preprocessed data.
        event_id : dict | list | None
            Overrides ``self.event_id``.
        mode : str | None
            ``"fixed"`` or ``"events"`` for continuous data; ``None`` picks ``"events"`` when
            event ids are set, ``"fixed"`` otherwise. Windows of continuous data that overlap a
            ``BAD*`` or ``EDGE*`` annotation are dropped. Epochs and evoked responses always give
            one window per segment, from ``tmin``.
        path : str | Path | None
            Named in errors.

        Returns
        -------
        plan : WindowPlan
        segments : np.ndarray | None
            Segment index of every window (epochs and evoked responses only).
        """
        n = self.window_samples
        sfreq = preprocessed.sfreq
        if preprocessed.data.ndim == 3:
            return self._plan_segments(inst, preprocessed, path)
        event_id = self.event_id if event_id is None else event_id
        mode = mode or ("events" if event_id else "fixed")
        if mode == "fixed":
            plan = fixed_length_windows(
                preprocessed.data.shape[1], n, overlap=self.overlap, sfreq=sfreq, path=path
            )
        elif mode == "events":
            times, names = find_events(inst, event_id, stim_channel=self.stim_channel, path=path)
            # onsets relative to the recording start (window start), as for fixed-length windows
            plan = event_locked_windows(
                times,
                names,
                tmin=self.tmin,
                n_samples=n,
                sfreq=sfreq,
                n_times=preprocessed.data.shape[1],
                path=path,
            )
        else:
            raise ValueError(f"mode={mode!r}; expected 'fixed' or 'events'")
        plan = drop_windows_in_bad_segments(
            plan, bad_segments(inst), n_samples=n, sfreq=sfreq, path=path
        )
        return plan, None

    def _plan_segments(self, inst, preprocessed, path) -> tuple[WindowPlan, np.ndarray]:
        n = self.window_samples
        sfreq = preprocessed.sfreq
        n_segments, _, n_times = preprocessed.data.shape
        start = int(round((self.tmin - preprocessed.first_time) * sfreq))
        if start < 0 or start + n > n_times:
            span = (preprocessed.first_time, preprocessed.first_time + (n_times - 1) / sfreq)
            raise RecordingTooShortError(
                path,
                f"segments span {span[0]:.3f}..{span[1]:.3f} s; a window from tmin={self.tmin:g} s "
                f"to tmax={self.tmax:g} s ({n} samples at {sfreq:g} Hz) does not fit; choose "
                "tmin and window_seconds inside the segments",
            )
        if isinstance(inst, mne.BaseEpochs):
            code_to_name = {code: name for name, code in inst.event_id.items()}
            names = [code_to_name.get(int(c), str(int(c))) for c in inst.events[:, 2]]
        else:
            evokeds = [inst] if isinstance(inst, mne.Evoked) else list(inst)
            names = [condition_name(evoked, i) for i, evoked in enumerate(evokeds)]
        starts = np.full(n_segments, start, dtype=np.int64)
        onsets = np.full(n_segments, preprocessed.first_time + start / sfreq)
        return WindowPlan(starts=starts, onsets_s=onsets, events=names), np.arange(n_segments)

    def process(
        self,
        source: Source,
        *,
        event_id: Mapping[str, int] | Sequence[str] | None = None,
        mode: str | None = None,
        reject: bool = True,
        reader_kwargs: Mapping[str, Any] | None = None,
        path: str | Path | None = None,
    ) -> ProcessedRecording:
        """Read (if a path), preprocess, window and reject: the one code path for datasets and
        inference.

        Parameters
        ----------
        source : str | Path | Raw | Epochs | Evoked | list of Evoked
            A recording or its path.
        event_id : dict | list | None
            Events for event-locked windows (overrides ``self.event_id``).
        mode : str | None
            ``"fixed"`` or ``"events"`` (see :meth:`plan_windows`).
        reject : bool
            Apply peak-to-peak rejection with ``self.reject``.
        reader_kwargs : Mapping | None
            Extra keyword arguments for the MNE reader.
        path : str | Path | None
            Name of the recording in errors (defaults to ``source`` when it is a path).

        Returns
        -------
        processed : ProcessedRecording

        Raises
        ------
        MEGDataError
            A subclass naming the file and the problem.
        """
        if isinstance(source, str | Path):
            path = source if path is None else path
            inst = self.read(source, reader_kwargs=reader_kwargs)
        else:
            # in-memory objects belong to the caller: they are not modified, and their info is
            # never written anywhere by this code path
            inst = source
        preprocessed = self.preprocess(inst, path=path)
        plan, segments = self.plan_windows(
            inst, preprocessed, event_id=event_id, mode=mode, path=path
        )
        processed = ProcessedRecording(
            preprocessed=preprocessed,
            plan=plan,
            segments=segments,
            n_samples=self.window_samples,
            n_candidates=len(plan),
        )
        if reject and self.reject:
            keep = np.ones(len(plan), dtype=bool)
            rejected: dict[str, int] = {}
            for indices, windows in processed.iter_batches():
                batch_keep, batch_rejected = peak_to_peak_rejection(
                    windows, preprocessed.sensors.types, preprocessed.mask, self.reject
                )
                keep[indices] = batch_keep
                for name, count in batch_rejected.items():
                    rejected[name] = rejected.get(name, 0) + count
            processed.plan = plan.select(keep)
            processed.plan.rejected = rejected
            if segments is not None:
                processed.segments = segments[keep]
            if rejected:
                logger.info(
                    "rejected %d of %d windows by peak-to-peak amplitude (%s)",
                    int((~keep).sum()),
                    len(keep),
                    ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items())),
                )
        if len(processed) == 0:
            raise NoWindowsError(
                path,
                f"all {processed.n_candidates} windows were rejected by the peak-to-peak "
                f"thresholds {self.reject} (rejections per sensor type: {processed.plan.rejected})",
            )
        return processed

    # -- model inputs ------------------------------------------------------------------------------

    def __call__(
        self,
        recordings: Source | Sequence[Source],
        *,
        event_id: Mapping[str, int] | Sequence[str] | None = None,
        mode: str | None = None,
        reject: bool = False,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Return model inputs for every window of one or more recordings.

        Parameters
        ----------
        recordings : path | Raw | Epochs | Evoked | list of those
            One recording, or a list; windows of recordings with different sensor counts are
            padded to the largest count with masked zero sensors.
        event_id, mode
            See :meth:`process`.
        reject : bool
            Apply peak-to-peak rejection (off by default at inference: every window is kept).
        return_tensors : str | None
            ``"pt"`` (torch), ``"np"`` or ``None`` (numpy).

        Returns
        -------
        inputs : transformers.BatchFeature
            ``input_values`` (n_windows, n_sensors, n_samples) float32, ``sensor_positions``
            (n_windows, n_sensors, 6) float32, ``sensor_types`` (n_windows, n_sensors) int64,
            ``sensor_mask`` (n_windows, n_sensors) bool.
        """
        if isinstance(recordings, list | tuple) and not all(
            isinstance(r, mne.Evoked) for r in recordings
        ):
            items = list(recordings)
        else:
            items = [recordings]
        per_recording = [
            self.to_model_inputs(self.process(item, event_id=event_id, mode=mode, reject=reject))
            for item in items
        ]
        return BatchFeature(data=pad_sensors(per_recording), tensor_type=return_tensors)

    @staticmethod
    def to_model_inputs(processed: ProcessedRecording) -> dict[str, np.ndarray]:
        """Stack the windows of a processed recording into model-input arrays."""
        n = len(processed)
        sensors = processed.sensors
        return {
            "input_values": processed.windows(),
            "sensor_positions": np.broadcast_to(
                sensors.positions, (n, *sensors.positions.shape)
            ).copy(),
            "sensor_types": np.broadcast_to(sensors.types, (n, sensors.n_sensors)).copy(),
            "sensor_mask": np.broadcast_to(processed.sensor_mask, (n, sensors.n_sensors)).copy(),
        }


def pad_sensors(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate model-input arrays along windows, padding sensors with masked zeros.

    Parameters
    ----------
    batches : sequence of dict
        Each with ``input_values`` (n, sensors, samples), ``sensor_positions`` (n, sensors, 6),
        ``sensor_types`` (n, sensors), ``sensor_mask`` (n, sensors).

    Returns
    -------
    inputs : dict
        The same keys, with sensors padded to the largest count (``sensor_mask`` False there).
    """
    n_sensors = max(b["input_values"].shape[1] for b in batches)
    out: dict[str, list[np.ndarray]] = {key: [] for key in MODEL_INPUT_NAMES}
    for batch in batches:
        pad = n_sensors - batch["input_values"].shape[1]
        for key in MODEL_INPUT_NAMES:
            value = batch[key]
            widths = [(0, 0)] * value.ndim
            widths[1] = (0, pad)
            out[key].append(np.pad(value, widths) if pad else value)
    return {key: np.concatenate(values) for key, values in out.items()}


__all__ = ["DEFAULT_REJECT", "MEGProcessor", "ProcessedRecording", "pad_sensors"]
