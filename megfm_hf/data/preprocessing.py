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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np

from ..modeling.configuration_megfm import SENSOR_TYPES
from .errors import NonFiniteDataError, SamplingRateError, UnreadableRecordingError
from .sensors import SensorArray, pick_meg_sensors, sensor_array

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
    """

    data: np.ndarray
    sensors: SensorArray
    mask: np.ndarray
    sfreq: float
    first_time: float
    scalings: dict[str, float]


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
    line_freq: float | None,
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
    line_freq : float | None
        Power-line frequency in Hz (``None``: no notch).
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

    if l_freq is not None:
        # the high-pass removes the offset anyway; removing it first keeps the large DC offsets
        # of CTF and KIT sensors from ringing at the recording's edges
        data -= data.mean(axis=1, keepdims=True)
    downsample = raw.info["sfreq"] > sfreq and not np.isclose(raw.info["sfreq"], sfreq)
    if downsample:
        # resampling first (its anti-alias filter removes everything above the new Nyquist
        # frequency, which lies above h_freq) makes the notch and band-pass filters several times
        # cheaper; upsampling happens last for the same reason
        raw.resample(sfreq, verbose="error")
    with warnings.catch_warnings():
        # short recordings are shorter than the high-pass filter; MNE warns, the edges distort
        warnings.filterwarnings("ignore", message=".*longer than the signal.*")
        freqs = _notch_freqs(line_freq, h_freq, raw.info["sfreq"])
        if len(freqs):
            raw.notch_filter(freqs, picks="all", verbose="error")
        if l_freq is not None or h_freq is not None:
            raw.filter(l_freq, h_freq, picks="all", verbose="error")
    if not np.isclose(raw.info["sfreq"], sfreq):
        raw.resample(sfreq, verbose="error")

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
    )


def preprocess_segments(
    inst: mne.BaseEpochs | mne.Evoked,
    *,
    sfreq: float,
    h_freq: float | None,
    scalings: Mapping[str, float],
    scaling_mode: str = "physical",
    path: str | Path | None = None,
) -> PreprocessedData:
    """Preprocess epochs or an evoked response: pick MEG sensors, low-pass, resample, scale.

    High-pass and notch filters are not applied: on segments of a few hundred milliseconds they
    distort more than they remove. Filter the continuous recording before epoching instead.

    Parameters
    ----------
    inst : mne.BaseEpochs | mne.Evoked
        Not modified.
    sfreq, h_freq, scalings, scaling_mode, path
        As in :func:`preprocess_raw`.

    Returns
    -------
    preprocessed : PreprocessedData
        ``data`` has shape ``(n_epochs, n_sensors, n_times)`` for epochs and
        ``(n_sensors, n_times)`` for an evoked response; ``first_time`` is ``tmin``.
    """
    check_band(inst.info["sfreq"], None, h_freq, path)
    picks = pick_meg_sensors(inst.info, path)
    inst = inst.copy()
    if isinstance(inst, mne.BaseEpochs):
        inst.load_data()
    inst.pick(picks)
    sensors = sensor_array(inst.info, path)
    mask = np.array([name not in inst.info["bads"] for name in inst.ch_names])
    data = inst.get_data()
    _check_finite(
        np.moveaxis(data, -2, 0).reshape(len(mask), -1),
        mask,
        inst.ch_names,
        inst.info["sfreq"],
        path,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*longer than the signal.*")
        if h_freq is not None:
            inst.filter(None, h_freq, picks="all", verbose="error")
        if not np.isclose(inst.info["sfreq"], sfreq):
            inst.resample(sfreq, verbose="error")
    data = inst.get_data()
    factors = scale_factors(data, sensors.types, mask, scalings=scalings, mode=scaling_mode)
    scaled = (data * factors[:, None]).astype(np.float32)
    scaled[..., ~mask, :] = 0.0
    return PreprocessedData(
        data=scaled,
        sensors=sensors,
        mask=mask,
        sfreq=float(inst.info["sfreq"]),
        first_time=float(inst.times[0]),
        scalings={name: float(scalings[name]) for name in SENSOR_TYPES},
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
    "PreprocessedData",
    "check_band",
    "detect_bad_sensors",
    "preprocess_raw",
    "preprocess_segments",
    "scale_factors",
]
