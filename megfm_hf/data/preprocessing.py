"""Preprocessing of continuous MEG: pick sensors, mark bad sensors, notch, band-pass, resample,
scale per sensor type.

Units after scaling (the default, ``scaling_mode="physical"``): magnetometers, axial gradiometers
and OPMs in picotesla (tesla x 1e12); planar gradiometers in units of 100 fT/cm (T/m x 1e11). Both
put typical brain signals at values of order one. ``scaling_mode="robust"`` instead divides each
sensor type by the median over its good sensors of the per-sensor robust standard deviation
(1.4826 x median absolute deviation) of this recording, which equalises recordings whose absolute
calibration differs; the physical units are then lost.

Bad sensors (``info["bads"]`` or detected as flat or noisy) are kept in place, their samples set
to zero and their mask entry set to ``False``, so the sensor array keeps its geometry and the model
sees which sensors to ignore.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np

from ..modeling.configuration_megfm import SENSOR_TYPES
from .errors import (
    InconsistentSegmentsError,
    NonFiniteDataError,
    SamplingRateError,
    UnreadableRecordingError,
)
from .sensors import SensorArray, pick_meg_sensors, sensor_array
from .windowing import BOUNDARY_ANNOTATIONS, annotation_onsets

logger = logging.getLogger(__name__)

#: scale factors from SI units (T, T/m) to the model's units, per sensor type name
DEFAULT_SCALINGS: dict[str, float] = {
    "magnetometer": 1e12,  # T -> pT
    "planar_gradiometer": 1e11,  # T/m -> 100 fT/cm
    "axial_gradiometer": 1e12,  # T -> pT
    "opm": 1e12,  # T -> pT
}

#: per-sensor standard deviation below which a sensor is flat, in SI units (T or T/m)
DEFAULT_FLAT_THRESHOLDS: dict[str, float] = {
    "magnetometer": 1e-15,
    "planar_gradiometer": 1e-14,
    "axial_gradiometer": 1e-15,
    "opm": 1e-15,
}


@dataclass
class PreprocessedData:
    """Preprocessed MEG sensors of one recording, at the target rate and in model units.

    Attributes
    ----------
    data : np.ndarray, float32
        Shape ``(n_sensors, n_times)`` for continuous data and single evoked responses, or
        ``(n_epochs, n_sensors, n_times)`` for epochs.
    sensors : SensorArray
        Types and geometry.
    mask : np.ndarray of bool, shape (n_sensors,)
        ``False`` for bad sensors (their samples are zero).
    sfreq : float
        Sampling rate of ``data`` in Hz.
    first_time : float
        Time of the first sample in seconds: 0 for continuous data (time from the start of the
        recording), the epoch's or evoked response's ``tmin`` otherwise (time from the event).
    scalings : dict
        Factor applied per sensor type name.
    line_freq : float | None
        Power-line frequency in Hz the notch filter was applied at (with its harmonics);
        ``None`` when no notch was applied.
    """

    data: np.ndarray
    sensors: SensorArray
    mask: np.ndarray
    sfreq: float
    first_time: float
    scalings: dict[str, float]
    line_freq: float | None = None


def check_band(
    sfreq: float, l_freq: float | None, h_freq: float | None, path: str | Path | None
) -> None:
    """Raise if a recording sampled at ``sfreq`` cannot hold the band ``[l_freq, h_freq]``.

    Parameters
    ----------
    sfreq : float
        Sampling rate of the recording in Hz.
    l_freq, h_freq : float | None
        Band edges in Hz.
    path : str | Path | None
        The recording, named in the error.
    """
    nyquist = sfreq / 2.0
    if h_freq is not None and h_freq >= nyquist:
        raise SamplingRateError(
            path,
            f"sfreq={sfreq:g} Hz (Nyquist {nyquist:g} Hz) is too low for the band's upper edge "
            f"h_freq={h_freq:g} Hz; expected sfreq > {2 * h_freq:g} Hz, or lower h_freq",
        )
    if l_freq is not None and l_freq >= nyquist:
        raise SamplingRateError(
            path,
            f"sfreq={sfreq:g} Hz (Nyquist {nyquist:g} Hz) is too low for the band's lower edge "
            f"l_freq={l_freq:g} Hz",
        )


def detect_bad_sensors(
    data: np.ndarray,
    types: np.ndarray,
    *,
    flat_thresholds: Mapping[str, float] | None = None,
    noisy_zscore: float | None = 6.0,
) -> np.ndarray:
    """Find flat and noisy sensors.

    Parameters
    ----------
    data : np.ndarray, shape (n_sensors, n_times)
        Data in SI units (T, T/m).
    types : np.ndarray of int, shape (n_sensors,)
        Sensor type codes.
    flat_thresholds : Mapping | None
        Standard deviation below which a sensor is flat, per sensor type name, in T or T/m.
    noisy_zscore : float | None
        A sensor is noisy when the robust z-score of its log standard deviation, among the
        sensors of its type, exceeds this value (``None`` disables the check).

    Returns
    -------
    bad : np.ndarray of bool, shape (n_sensors,)
    """
    flat_thresholds = {**DEFAULT_FLAT_THRESHOLDS, **(flat_thresholds or {})}
    # Sensor by sensor: `data.std(axis=1)` allocates temporaries the size of the recording
    # (gigabytes for an hour of MEG), which cost 20 times the arithmetic.
    std = np.array([sensor.std() for sensor in data], dtype=np.float64).reshape(len(data))
    bad = np.zeros(len(types), dtype=bool)
    for code, name in enumerate(SENSOR_TYPES):
        of_type = types == code
        if not of_type.any():
            continue
        bad |= of_type & (std < flat_thresholds[name])
        candidates = of_type & ~bad
        if noisy_zscore is None or candidates.sum() < 8:
            continue
        log_std = np.log(std[candidates])
        median = np.median(log_std)
        mad = 1.4826 * np.median(np.abs(log_std - median))
        if mad > 0:
            noisy = np.zeros(len(types), dtype=bool)
            noisy[candidates] = (log_std - median) / mad > noisy_zscore
            bad |= noisy
    return bad


def scale_factors(
    data: np.ndarray,
    types: np.ndarray,
    mask: np.ndarray,
    *,
    scalings: Mapping[str, float],
    mode: str = "physical",
) -> np.ndarray:
    """Return one multiplicative factor per sensor that brings the data to order one.

    Parameters
    ----------
    data : np.ndarray, shape (..., n_sensors, n_times)
        Data in SI units.
    types : np.ndarray of int
        Sensor type codes.
    mask : np.ndarray of bool
        Good sensors (used by the robust mode).
    scalings : Mapping
        Fixed factors per sensor type name (physical mode).
    mode : str
        ``"physical"`` or ``"robust"`` (see the module notes).

    Returns
    -------
    factors : np.ndarray, shape (n_sensors,)
    """
    factors = np.array([scalings[SENSOR_TYPES[code]] for code in types], dtype=np.float64)
    if mode == "physical":
        return factors
    if mode != "robust":
        raise ValueError(f"scaling_mode={mode!r}; expected 'physical' or 'robust'")
    flat = np.moveaxis(data, -2, 0).reshape(len(types), -1)
    median = np.median(flat, axis=1, keepdims=True)
    robust_std = 1.4826 * np.median(np.abs(flat - median), axis=1)
    for code in np.unique(types):
        good = (types == code) & mask & (robust_std > 0)
        if good.any():
            factors[types == code] = 1.0 / np.median(robust_std[good])
    return factors


#: power-line frequencies in use around the world, in Hz
LINE_FREQS: tuple[float, float] = (50.0, 60.0)
#: a line frequency is detected when its spectral peak is this many times the power of the
#: neighbouring frequencies (about 6 dB) and this many times the other line frequency's peak
LINE_PEAK_MIN_PROMINENCE = 4.0
LINE_PEAK_MIN_CONTRAST = 2.0
#: seconds of data the line frequency is detected from (enough for a stable spectrum)
LINE_DETECTION_SECONDS = 60.0


def line_noise_prominence(
    data: np.ndarray, sfreq: float, freqs: tuple[float, ...] = LINE_FREQS
) -> dict[float, float]:
    """Measure how far the spectrum peaks at candidate power-line frequencies.

    Parameters
    ----------
    data : np.ndarray, shape (n_sensors, n_times)
        Good MEG sensors, in any unit.
    sfreq : float
        Sampling rate in Hz.
    freqs : tuple of float
        Candidate line frequencies in Hz.

    Returns
    -------
    prominence : dict
        Per candidate frequency, the median over sensors of the Welch power spectral density at
        its peak (within 1 Hz) divided by the median density 3-8 Hz away on both sides; ``nan``
        when the frequency lies too close to the Nyquist frequency or the data is too short.
    """
    from scipy.signal import welch

    n_per_segment = min(data.shape[-1], int(round(2.0 * sfreq)))  # 0.5 Hz resolution
    prominence = {float(f): float("nan") for f in freqs}
    if n_per_segment < int(round(0.5 * sfreq)) or len(data) == 0:
        return prominence
    psd_freqs, psd = welch(data, fs=sfreq, nperseg=n_per_segment, axis=-1)
    for f in freqs:
        distance = np.abs(psd_freqs - f)
        peak_bins = distance <= 1.0
        neighbour_bins = (distance >= 3.0) & (distance <= 8.0)
        if f + 8.0 >= sfreq / 2.0 or not peak_bins.any():
            continue
        peak = psd[:, peak_bins].max(axis=1)
        floor = np.median(psd[:, neighbour_bins], axis=1)
        valid = floor > 0
        if valid.any():
            prominence[float(f)] = float(np.median(peak[valid] / floor[valid]))
    return prominence


def detect_line_freq(
    data: np.ndarray, sfreq: float, *, path: str | Path | None = None
) -> float | None:
    """Tell 50 Hz from 60 Hz power-line noise in the spectrum of MEG sensors.

    Parameters
    ----------
    data : np.ndarray, shape (n_sensors, n_times)
        Good MEG sensors; at most the first :data:`LINE_DETECTION_SECONDS` are used.
    sfreq : float
        Sampling rate in Hz.
    path : str | Path | None
        The recording, named in the log.

    Returns
    -------
    line_freq : float | None
        The frequency whose peak is at least :data:`LINE_PEAK_MIN_PROMINENCE` times its
        neighbourhood and :data:`LINE_PEAK_MIN_CONTRAST` times the other's; ``None`` when the
        spectrum shows neither clearly.
    """
    where = "<in-memory recording>" if path is None else str(path)
    prominence = line_noise_prominence(data[:, : int(LINE_DETECTION_SECONDS * sfreq)], sfreq)
    measured = ", ".join(f"{f:g} Hz: {p:.1f}" for f, p in prominence.items())
    finite = {f: p for f, p in prominence.items() if np.isfinite(p)}
    if finite:
        best = max(finite, key=finite.get)
        others = [p for f, p in finite.items() if f != best]
        contrast = finite[best] / max([1.0, *others])
        if finite[best] >= LINE_PEAK_MIN_PROMINENCE and contrast >= LINE_PEAK_MIN_CONTRAST:
            logger.info(
                "%s: info['line_freq'] is not set; notch at %g Hz, detected from the spectrum "
                "(peak over neighbouring frequencies: %s)",
                where,
                best,
                measured,
            )
            return best
    return None


def _notch_freqs(line_freq: float | None, h_freq: float | None, sfreq: float) -> np.ndarray:
    if not line_freq:
        return np.array([])
    top = sfreq / 2.0 - 1.0
    if h_freq is not None:
        top = min(top, h_freq + line_freq / 2.0)
    return np.arange(line_freq, top, line_freq)


def preprocess_raw(
    raw: mne.io.BaseRaw,
    *,
    sfreq: float,
    l_freq: float | None,
    h_freq: float | None,
    line_freq: float | str | None,
    scalings: Mapping[str, float],
    scaling_mode: str = "physical",
    detect_bads: bool = True,
    flat_thresholds: Mapping[str, float] | None = None,
    noisy_zscore: float | None = 6.0,
    path: str | Path | None = None,
) -> PreprocessedData:
    """Preprocess the MEG sensors of a continuous recording.

    Steps, in order: pick MEG sensors (references left out), load them, check for NaNs on good
    sensors, mark bad sensors, remove each sensor's mean (when high-passing), resample to
    ``sfreq`` (when downsampling), notch at ``line_freq`` and its harmonics up to the band,
    band-pass ``[l_freq, h_freq]`` (zero-phase FIR), resample (when upsampling), scale per sensor
    type. SSP projectors and gradient compensation are left as they are in the file.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording; not modified (a copy holding only MEG sensors is loaded).
    sfreq : float
        Target sampling rate in Hz.
    l_freq, h_freq : float | None
        Band edges in Hz (``None``: no high-pass / no low-pass).
    line_freq : float | str | None
        Power-line frequency in Hz (``None``: no notch); ``"auto"`` detects 50 or 60 Hz from
        the spectrum of the good sensors (:func:`detect_line_freq`) and falls back to 50 Hz
        with a warning when neither shows clearly.
    scalings : Mapping
        Factor per sensor type name (see :data:`DEFAULT_SCALINGS`).
    scaling_mode : str
        ``"physical"`` or ``"robust"``.
    detect_bads : bool
        Detect flat and noisy sensors in addition to ``info["bads"]``.
    flat_thresholds : Mapping | None
        See :func:`detect_bad_sensors`.
    noisy_zscore : float | None
        See :func:`detect_bad_sensors`.
    path : str | Path | None
        The recording, named in errors.

    Returns
    -------
    preprocessed : PreprocessedData
        ``line_freq`` is the notch frequency used.
    """
    check_band(raw.info["sfreq"], l_freq, h_freq, path)
    picks = pick_meg_sensors(raw.info, path)
    raw = raw.copy().pick(picks)
    sensors = sensor_array(raw.info, path)
    try:
        raw.load_data(verbose="error")
    except Exception as err:  # noqa: BLE001 - truncated or corrupted data blocks
        raise UnreadableRecordingError(
            path, f"data cannot be loaded, the file may be truncated ({type(err).__name__}: {err})"
        ) from err
    data = raw._data
    mask = np.array([name not in raw.info["bads"] for name in raw.ch_names])
    _check_finite(data, mask, raw.ch_names, raw.info["sfreq"], path)
    data[~mask] = 0.0
    if detect_bads:
        detected = (
            detect_bad_sensors(
                data, sensors.types, flat_thresholds=flat_thresholds, noisy_zscore=noisy_zscore
            )
            & mask
        )
        if detected.any():
            logger.info("%d sensors detected as flat or noisy are masked", int(detected.sum()))
            mask &= ~detected
            data[~mask] = 0.0

    if line_freq == "auto":
        recorded = data[mask, : int(LINE_DETECTION_SECONDS * raw.info["sfreq"])]
        notch_sfreq = min(raw.info["sfreq"], sfreq)  # the notch runs after downsampling
        line_freq = _auto_line_freq(recorded, raw.info["sfreq"], notch_sfreq, h_freq, path)
    elif isinstance(line_freq, str):
        raise ValueError(f"line_freq={line_freq!r}; expected a frequency in Hz, 'auto' or None")
    if l_freq is not None:
        # the high-pass removes the offset anyway; removing it first keeps the large DC offsets
        # of CTF and KIT sensors from ringing at the recording's edges
        data -= data.mean(axis=1, keepdims=True)
    downsample = raw.info["sfreq"] > sfreq and not np.isclose(raw.info["sfreq"], sfreq)
    if downsample:
        # resampling first (its anti-alias filter removes everything above the new Nyquist
        # frequency, which lies above h_freq) makes the notch and band-pass filters several times
        # cheaper; upsampling happens last for the same reason
        raw = resample_by_piece(raw, sfreq)
    with warnings.catch_warnings():
        # short recordings are shorter than the high-pass filter; MNE warns, the edges distort
        warnings.filterwarnings("ignore", message=".*longer than the signal.*")
        freqs = _notch_freqs(line_freq, h_freq, raw.info["sfreq"])
        if not len(freqs):
            line_freq = None
        else:
            raw.notch_filter(freqs, picks="all", verbose="error")
        if l_freq is not None or h_freq is not None:
            raw.filter(l_freq, h_freq, picks="all", verbose="error")
    if not np.isclose(raw.info["sfreq"], sfreq):
        raw = resample_by_piece(raw, sfreq)

    data = raw.get_data()
    factors = scale_factors(data, sensors.types, mask, scalings=scalings, mode=scaling_mode)
    scaled = (data * factors[:, None]).astype(np.float32)
    scaled[~mask] = 0.0
    return PreprocessedData(
        data=scaled,
        sensors=sensors,
        mask=mask,
        sfreq=float(raw.info["sfreq"]),
        first_time=0.0,
        scalings={name: float(scalings[name]) for name in SENSOR_TYPES},
        line_freq=None if line_freq is None else float(line_freq),
    )


def boundary_samples(raw: mne.io.BaseRaw) -> np.ndarray:
    """Samples where a recording jumps from one piece of data to the next.

    The pieces are those :func:`mne.concatenate_raws` joined, or the trials of a CTF dataset
    (:func:`~megfm_hf.data.readers.mark_trial_boundaries`): both are marked by zero-duration
    ``EDGE`` annotations, which MNE's filters already treat as ends of the data. Unlike the
    pieces of a concatenation in memory, the marks survive saving and reading back.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording.

    Returns
    -------
    samples : np.ndarray of int
        Sorted sample indices, from the first sample of the data, strictly inside it.
    """
    edges = [
        description.upper().startswith("EDGE") and duration == 0
        for description, duration in zip(
            raw.annotations.description, raw.annotations.duration, strict=True
        )
    ]
    onsets = annotation_onsets(raw)[np.asarray(edges, dtype=bool)]
    samples = np.unique(np.round(onsets * raw.info["sfreq"]).astype(np.int64))
    return samples[(samples > 0) & (samples < raw.n_times)]


def resample_by_piece(raw: mne.io.BaseRaw, sfreq: float) -> mne.io.BaseRaw:
    """Resample a loaded recording to ``sfreq``, each piece between boundaries on its own.

    :meth:`mne.io.Raw.resample` resamples the pieces of a concatenation in memory separately,
    but a recording read from a file is one piece to it, however many trials or concatenated
    recordings it holds: resampled as one, it rings across every jump between them. Here the
    pieces are found from their ``EDGE`` annotations (:func:`boundary_samples`), resampled one
    by one, and joined again with :func:`mne.concatenate_raws`, which marks the boundaries as
    before; the other annotations are kept.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        A loaded recording; resampled in place when it is in one piece.
    sfreq : float
        The new sampling rate in Hz.

    Returns
    -------
    raw : mne.io.BaseRaw
        ``raw`` itself, or a new recording when it was resampled piece by piece.
    """
    cuts = boundary_samples(raw)
    if not len(cuts):
        return raw.resample(sfreq, verbose="error")
    bounds = np.concatenate([[0], cuts, [raw.n_times]])
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        piece = mne.io.RawArray(
            raw.get_data(start=start, stop=stop),
            raw.info,
            first_samp=raw.first_samp + start,
            verbose="error",
        )
        pieces.append(piece.resample(sfreq, verbose="error"))
    joined = mne.concatenate_raws(pieces, verbose="error")
    # concatenate_raws marks the boundaries again; the other annotations come from the original
    boundary = np.isin(raw.annotations.description, BOUNDARY_ANNOTATIONS)
    joined.set_annotations(joined.annotations + raw.annotations[~boundary])
    return joined


def _auto_line_freq(
    data: np.ndarray,
    sfreq: float,
    notch_sfreq: float,
    h_freq: float | None,
    path: str | Path | None,
) -> float | None:
    """The line frequency of a recording without ``info["line_freq"]``: detected, else 50 Hz."""
    if not any(len(_notch_freqs(f, h_freq, notch_sfreq)) for f in LINE_FREQS):
        return None  # no line frequency lies in the band: there is nothing to notch
    detected = detect_line_freq(data, sfreq, path=path)
    if detected is not None:
        return detected
    where = "<in-memory recording>" if path is None else str(path)
    logger.warning(
        "%s: info['line_freq'] is not set and the spectrum shows no clear 50 or 60 Hz peak; "
        "notch at 50 Hz. Set the power-line frequency with MEGProcessor(line_freq=...) "
        "(--line-freq on the command line) or in the recording's info['line_freq']",
        where,
    )
    return 50.0


def averaged_flat_thresholds(
    flat_thresholds: Mapping[str, float] | None, naves: Sequence[float]
) -> dict[str, float]:
    """Flat thresholds for averages: single-trial thresholds over ``sqrt(nave_eff)``.

    Averaging ``nave`` trials divides the noise standard deviation of a sensor by
    ``sqrt(nave)``; dividing the threshold by as much keeps its margin below the noise of a
    working sensor. Concatenated conditions of ``nave_1, ..., nave_n`` trials have the averaged
    noise variance of ``nave_eff = 1 / mean(1 / nave_i)`` trials.

    Parameters
    ----------
    flat_thresholds : Mapping | None
        Single-trial thresholds per sensor type name, in T or T/m, over
        :data:`DEFAULT_FLAT_THRESHOLDS`.
    naves : sequence of float
        Trials averaged in each condition (values below one count as one).

    Returns
    -------
    thresholds : dict
        One threshold per sensor type name.
    """
    thresholds = {**DEFAULT_FLAT_THRESHOLDS, **(flat_thresholds or {})}
    nave_eff = 1.0 / np.mean([1.0 / max(float(nave), 1.0) for nave in naves])
    return {name: float(value) / float(np.sqrt(nave_eff)) for name, value in thresholds.items()}


def condition_name(evoked: mne.Evoked, index: int) -> str:
    """Name of an evoked response: its comment, else ``"condition <index>"``."""
    return str(evoked.comment or f"condition {index}")


def preprocess_segments(
    inst: mne.BaseEpochs | mne.Evoked | Sequence[mne.Evoked],
    *,
    sfreq: float,
    h_freq: float | None,
    scalings: Mapping[str, float],
    scaling_mode: str = "physical",
    detect_bads: bool = True,
    flat_thresholds: Mapping[str, float] | None = None,
    noisy_zscore: float | None = 6.0,
    path: str | Path | None = None,
) -> PreprocessedData:
    """Preprocess epochs or evoked responses: pick MEG sensors, mark bad sensors, low-pass,
    resample, scale.

    High-pass and notch filters are not applied: on segments of a few hundred milliseconds they
    distort more than they remove. Filter the continuous recording before epoching instead.
    Scale factors are computed once over all segments (every epoch, or every condition of an
    evoked file), so that relative amplitudes between them are kept in the robust mode too.

    Bad sensor detection (``detect_bads``) runs on the picked MEG data in SI units, before
    filtering, on all segments together (every epoch, or every condition, concatenated in time),
    with :func:`detect_bad_sensors`; a detected sensor is masked in every segment, like the
    sensors of ``info["bads"]``.

    - Flat sensors: ``flat_thresholds`` are meant for single trials (continuous data, epochs).
      An evoked response averages ``nave`` trials, so the noise of a working sensor is about
      ``sqrt(nave)`` times smaller than in the raw data; for evoked input each threshold is
      therefore divided by ``sqrt(nave_eff)``, where ``nave_eff = 1 / mean(1 / nave)`` over the
      conditions (the averaged noise variance of the concatenated conditions is the mean of
      theirs), so a threshold keeps the same margin below the sensor noise as in raw data. A
      dead sensor (constant output) has zero standard deviation at any ``nave``.
    - Noisy sensors: the same robust z-score of the log standard deviation as for continuous
      data, for epochs and evoked input alike. On averages, sensors over the active region carry
      the response and have a larger standard deviation, but the response spreads over many
      sensors and widens the spread the z-score divides by: on the real Neuromag and CTF
      averages checked (auditory, visual, somatosensory; 3-302 trials) good sensors reach
      z < 4.2, below the default 6, while a broken gradiometer reaches z = 17.

    Parameters
    ----------
    inst : mne.BaseEpochs | mne.Evoked | sequence of mne.Evoked
        Epochs, or one evoked response per condition; not modified.
    sfreq, h_freq, scalings, scaling_mode, path
        As in :func:`preprocess_raw`.
    detect_bads : bool
        Detect flat and noisy sensors in addition to ``info["bads"]`` (see above).
    flat_thresholds : Mapping | None
        Per-sensor standard deviation below which a sensor is flat, for single trials, per
        sensor type name, in T or T/m (see :func:`detect_bad_sensors`); scaled by
        ``1 / sqrt(nave_eff)`` for evoked input.
    noisy_zscore : float | None
        See :func:`detect_bad_sensors`.

    Returns
    -------
    preprocessed : PreprocessedData
        ``data`` has shape ``(n_segments, n_sensors, n_times)``, one segment per epoch or
        condition; ``first_time`` is ``tmin``; a sensor bad in any condition, or detected as flat
        or noisy over all segments, is masked in all.

    Raises
    ------
    InconsistentSegmentsError
        When evoked responses differ in MEG channels or time axis (naming the condition).
    """
    if isinstance(inst, mne.BaseEpochs):
        parts: list[mne.BaseEpochs | mne.Evoked] = [inst]
        names = ["epochs"]
    else:
        parts = [inst] if isinstance(inst, mne.Evoked) else list(inst)
        names = [condition_name(evoked, i) for i, evoked in enumerate(parts)]
    for part in parts:
        check_band(part.info["sfreq"], None, h_freq, path)
    picked = []
    for part in parts:
        part = part.copy()
        if isinstance(part, mne.BaseEpochs):
            part.load_data()
        picked.append(part.pick(pick_meg_sensors(part.info, path)))
    _check_same_axes(picked, names, path)
    sensors = sensor_array(picked[0].info, path)
    mask = np.array([all(name not in p.info["bads"] for p in picked) for name in sensors.ch_names])
    # every segment of every part, concatenated in time: (n_sensors, n_segments * n_times), in
    # SI units and unfiltered; one copy of the data, filled part by part
    lengths = [
        (len(part) if isinstance(part, mne.BaseEpochs) else 1) * len(part.times) for part in picked
    ]
    concatenated = np.empty((len(mask), sum(lengths)))
    offsets = np.cumsum([0, *lengths])
    for part, begin, end in zip(picked, offsets[:-1], offsets[1:], strict=True):
        concatenated[:, begin:end] = np.moveaxis(part.get_data(), -2, 0).reshape(len(mask), -1)
        _check_finite(concatenated[:, begin:end], mask, part.ch_names, part.info["sfreq"], path)
    if detect_bads:
        concatenated[~mask] = 0.0  # bad sensors may hold NaN; zeroed they count as flat
        if all(isinstance(part, mne.Evoked) for part in picked):
            flat_thresholds = averaged_flat_thresholds(
                flat_thresholds, [part.nave for part in picked]
            )
        detected = (
            detect_bad_sensors(
                concatenated,
                sensors.types,
                flat_thresholds=flat_thresholds,
                noisy_zscore=noisy_zscore,
            )
            & mask
        )
        if detected.any():
            logger.info("%d sensors detected as flat or noisy are masked", int(detected.sum()))
            mask &= ~detected
    del concatenated
    data = []
    for part in picked:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*longer than the signal.*")
            if h_freq is not None:
                part.filter(None, h_freq, picks="all", verbose="error")
            if not np.isclose(part.info["sfreq"], sfreq):
                part.resample(sfreq, verbose="error")
        filtered = part.get_data()
        data.append(filtered if filtered.ndim == 3 else filtered[None])
    stacked = np.concatenate(data)
    factors = scale_factors(stacked, sensors.types, mask, scalings=scalings, mode=scaling_mode)
    scaled = (stacked * factors[:, None]).astype(np.float32)
    scaled[..., ~mask, :] = 0.0
    return PreprocessedData(
        data=scaled,
        sensors=sensors,
        mask=mask,
        sfreq=float(picked[0].info["sfreq"]),
        first_time=float(picked[0].times[0]),
        scalings={name: float(scalings[name]) for name in SENSOR_TYPES},
    )


def _check_same_axes(
    parts: Sequence[mne.BaseEpochs | mne.Evoked], names: Sequence[str], path: str | Path | None
) -> None:
    """Raise unless every segment has the first one's MEG channels and time axis."""
    first, first_name = parts[0], names[0]
    for part, name in zip(parts[1:], names[1:], strict=True):
        if part.ch_names != first.ch_names:
            missing = sorted(set(first.ch_names) - set(part.ch_names))
            extra = sorted(set(part.ch_names) - set(first.ch_names))
            detail = (
                f"lacks {missing[:5]} and adds {extra[:5]}"
                if missing or extra
                else "has them in another order"
            )
            raise InconsistentSegmentsError(
                path,
                f"condition {name!r} has {len(part.ch_names)} MEG channels, condition "
                f"{first_name!r} {len(first.ch_names)}: {name!r} {detail}; expected every "
                "condition to hold the same MEG channels in the same order",
            )
        same_time = (
            np.isclose(part.info["sfreq"], first.info["sfreq"])
            and len(part.times) == len(first.times)
            and np.isclose(part.times[0], first.times[0], atol=0.5 / first.info["sfreq"])
        )
        if not same_time:
            raise InconsistentSegmentsError(
                path,
                f"condition {name!r} spans {_span(part)}, condition {first_name!r} "
                f"{_span(first)}; expected every condition on the same time axis",
            )


def _span(inst: mne.BaseEpochs | mne.Evoked) -> str:
    return (
        f"{inst.times[0]:.3f}..{inst.times[-1]:.3f} s ({len(inst.times)} samples at "
        f"{inst.info['sfreq']:g} Hz)"
    )


def _check_finite(
    data: np.ndarray, mask: np.ndarray, ch_names: list[str], sfreq: float, path
) -> None:
    finite = np.isfinite(data)
    bad_rows = ~finite.all(axis=1) & mask
    if bad_rows.any():
        first = int(np.flatnonzero(bad_rows)[0])
        first_sample = int(np.flatnonzero(~finite[first])[0])
        raise NonFiniteDataError(
            path,
            f"{int(bad_rows.sum())} good MEG sensors hold NaN or infinite samples (first: channel "
            f"{ch_names[first]!r} at {first_sample / sfreq:.3f} s); expected finite data, or mark "
            "those sensors in info['bads']",
        )


__all__ = [
    "DEFAULT_FLAT_THRESHOLDS",
    "DEFAULT_SCALINGS",
    "LINE_FREQS",
    "PreprocessedData",
    "averaged_flat_thresholds",
    "boundary_samples",
    "check_band",
    "condition_name",
    "detect_bad_sensors",
    "detect_line_freq",
    "line_noise_prominence",
    "preprocess_raw",
    "preprocess_segments",
    "resample_by_piece",
    "scale_factors",
]
