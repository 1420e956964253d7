"""Small synthetic recordings with real MEG geometry conventions, for tests and benchmarks.

The sensor array imitates a Vectorview/TRIUX helmet (one magnetometer and two orthogonal planar
gradiometers per site) or an OPM array, on a hemisphere of radius 0.12 m around the head origin.
Signals are white noise plus, optionally, a 20 Hz burst after every event, so event-locked windows
can be checked against where the burst must be.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mne
import numpy as np
from mne.io.constants import FIFF

#: burst after each event: frequency (Hz), duration (s), amplitude (T)
BURST_FREQ, BURST_DURATION, BURST_AMPLITUDE = 20.0, 0.1, 2e-12


def _sites(n_sites: int, radius: float = 0.12) -> np.ndarray:
    golden = np.pi * (3.0 - np.sqrt(5.0))
    k = np.arange(n_sites)
    z = 1.0 - (k + 0.5) / n_sites  # upper hemisphere only
    r = np.sqrt(1.0 - z**2)
    return radius * np.stack([r * np.cos(golden * k), r * np.sin(golden * k), z], axis=1)


def _frame(position: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ez = position / np.linalg.norm(position)
    helper = np.array([0.0, 0.0, 1.0]) if abs(ez[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    ex = np.cross(helper, ez)
    ex /= np.linalg.norm(ex)
    return ex, np.cross(ez, ex), ez


def make_raw(
    *,
    n_sites: int = 12,
    sfreq: float = 500.0,
    duration: float = 4.0,
    kind: str = "vectorview",
    event_samples: Sequence[int] = (),
    event_codes: Sequence[int] | None = None,
    noise: float = 1e-13,
    seed: int = 0,
    line_freq: float | None = 50.0,
) -> mne.io.RawArray:
    """Return a synthetic raw recording.

    Parameters
    ----------
    n_sites : int
        Sensor sites; ``"vectorview"`` puts 3 sensors per site (1 magnetometer, 2 planar
        gradiometers), ``"opm"`` one radial OPM, ``"eeg"`` one EEG electrode (no MEG).
    sfreq : float
        Sampling rate (Hz).
    duration : float
        Length (s).
    kind : str
        ``"vectorview"``, ``"opm"`` or ``"eeg"``.
    event_samples : sequence of int
        Samples (from the start) where ``STI 014`` steps to the event code; a 20 Hz burst of
        2 pT (magnetometers, OPM) / 2e-12 T per 0.01 m (gradiometers) follows each for 0.1 s.
    event_codes : sequence of int | None
        Code per event (all 1 when ``None``).
    noise : float
        Standard deviation of the white sensor noise (T, or T/m x 0.01 m for gradiometers).
    seed : int
        Random seed.
    line_freq : float | None
        Stored in ``info["line_freq"]``.

    Returns
    -------
    raw : mne.io.RawArray
    """
    rng = np.random.default_rng(seed)
    sites = _sites(n_sites)
    names, types, locs, coils = [], [], [], []
    for i, position in enumerate(sites):
        ex, ey, ez = _frame(position)
        if kind == "vectorview":
            for suffix, ch_type, coil, loc in (
                ("1", "mag", FIFF.FIFFV_COIL_VV_MAG_T3, (ex, ey, ez)),
                ("2", "grad", FIFF.FIFFV_COIL_VV_PLANAR_T1, (ex, ey, ez)),
                ("3", "grad", FIFF.FIFFV_COIL_VV_PLANAR_T1, (ey, -ex, ez)),
            ):
                names.append(f"MEG{i + 1:03d}{suffix}")
                types.append(ch_type)
                coils.append(coil)
                locs.append(np.concatenate([position, *loc]))
        elif kind == "opm":
            names.append(f"OPM{i + 1:03d}")
            types.append("mag")
            coils.append(FIFF.FIFFV_COIL_QUSPIN_ZFOPM_MAG2)
            locs.append(np.concatenate([position, ex, ey, ez]))
        elif kind == "eeg":
            names.append(f"EEG{i + 1:03d}")
            types.append("eeg")
            coils.append(FIFF.FIFFV_COIL_EEG)
            locs.append(np.concatenate([position, np.zeros(9)]))
        else:
            raise ValueError(f"kind={kind!r}; expected 'vectorview', 'opm' or 'eeg'")
    names.append("STI 014")
    types.append("stim")
    info = mne.create_info(names, sfreq, types)
    for ch, coil, loc in zip(info["chs"], coils, locs, strict=False):
        ch["coil_type"] = int(coil)
        ch["loc"][:12] = loc
    with info._unlock():
        info["line_freq"] = line_freq
        info["dev_head_t"] = mne.transforms.Transform("meg", "head", np.eye(4))

    n_times = int(round(duration * sfreq))
    n_sensors = len(names) - 1
    scale = np.array([100.0 if t == "grad" else 1.0 for t in types[:-1]])[:, None]
    data = np.zeros((len(names), n_times))
    data[:-1] = noise * rng.standard_normal((n_sensors, n_times)) * scale
    codes = list(event_codes) if event_codes is not None else [1] * len(event_samples)
    burst_len = int(round(BURST_DURATION * sfreq))
    burst = BURST_AMPLITUDE * np.sin(2 * np.pi * BURST_FREQ * np.arange(burst_len) / sfreq)
    for sample, code in zip(event_samples, codes, strict=True):
        data[-1, sample : sample + 5] = code
        end = min(sample + burst_len, n_times)
        data[:-1, sample:end] += burst[: end - sample] * scale
    if kind == "eeg":
        data[:-1] *= 1e7  # volts of order 1e-6
    return mne.io.RawArray(data, info, verbose="error")


def write_raw(raw: mne.io.BaseRaw, path: str | Path) -> Path:
    """Save a raw recording as FIF (overwriting) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(path, overwrite=True, verbose="error")
    return path


__all__ = ["BURST_AMPLITUDE", "BURST_DURATION", "BURST_FREQ", "make_raw", "write_raw"]
