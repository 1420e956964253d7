"""Current dipoles, their time courses and the forward model that maps them to the sensors.

Source locations are defined once, relative to the centre of the head sphere and for a head of
radius ``REFERENCE_HEAD_RADIUS``, then scaled to the head of the sensor array in use. Time
courses are generated in the frequency domain (coloured and narrow-band noise) or as sums of
Gaussian deflections (evoked components), all vectorised over sources and samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mne
import numpy as np
from scipy.signal import fftconvolve

from .geometry import SensorGeometry

logger = logging.getLogger(__name__)

#: head radius for which the canonical source positions below are written, m
REFERENCE_HEAD_RADIUS = 0.09
#: sensor noise spectral density of magnetometers (and axial gradiometers), T/sqrt(Hz)
MAG_NOISE_DENSITY = 3e-15
#: sensor noise spectral density of planar gradiometers, (T/m)/sqrt(Hz) (3 fT/cm/sqrt(Hz))
GRAD_NOISE_DENSITY = 3e-13


@dataclass(frozen=True)
class DipoleSpec:
    """A current dipole at a fixed place in the head.

    Attributes
    ----------
    name : str
        Identifier, e.g. ``"auditory_left"``.
    region : str
        Anatomical description.
    offset : tuple of float
        Position relative to the head-sphere origin for a head of radius
        ``REFERENCE_HEAD_RADIUS``, head coordinates, m.
    orientation : tuple of float
        Direction of the current (need not be unit length; the radial part, which a sphere
        makes silent, is removed when the dipole is placed).
    """

    name: str
    region: str
    offset: tuple[float, float, float]
    orientation: tuple[float, float, float]


#: the stimulus-driven and rhythmic sources of the cohort (head coordinates: +x right, +y nose)
CANONICAL_DIPOLES: tuple[DipoleSpec, ...] = (
    DipoleSpec("auditory_left", "left superior temporal gyrus (Heschl's gyrus)",
               (-0.052, 0.004, 0.012), (0.0, -0.3, -1.0)),
    DipoleSpec("auditory_right", "right superior temporal gyrus (Heschl's gyrus)",
               (0.052, 0.004, 0.012), (0.0, -0.3, -1.0)),
    DipoleSpec("somatosensory_left", "left postcentral gyrus, hand area (S1, area 3b)",
               (-0.034, -0.012, 0.054), (0.0, -1.0, 0.0)),
    DipoleSpec("somatosensory_right", "right postcentral gyrus, hand area (S1, area 3b)",
               (0.034, -0.012, 0.054), (0.0, -1.0, 0.0)),
    DipoleSpec("alpha_left", "left parieto-occipital cortex",
               (-0.026, -0.058, 0.026), (0.3, 0.0, 1.0)),
    DipoleSpec("alpha_right", "right parieto-occipital cortex",
               (0.026, -0.058, 0.026), (-0.3, 0.0, 1.0)),
)  # fmt: skip


@dataclass(frozen=True)
class PlacedSources:
    """Dipoles placed in one head, with their unit-moment forward fields.

    Attributes
    ----------
    names : list of str
        One name per dipole (canonical dipoles first, then ``background_000`` ...).
    positions : numpy.ndarray, shape (n_dipoles, 3)
        Positions in head coordinates, m.
    orientations : numpy.ndarray, shape (n_dipoles, 3)
        Unit current directions, tangential to the head sphere.
    gain : numpy.ndarray, shape (n_channels, n_dipoles)
        Field of each dipole at a moment of 1 A*m: T for magnetometers and axial gradiometers,
        T/m for planar gradiometers.
    """

    names: list[str]
    positions: np.ndarray
    orientations: np.ndarray
    gain: np.ndarray

    def index(self, name: str) -> int:
        """Column of ``gain`` that belongs to dipole ``name``."""
        return self.names.index(name)


def _tangential(orientations: np.ndarray, radial: np.ndarray) -> np.ndarray:
    radial = radial / np.linalg.norm(radial, axis=1, keepdims=True)
    tangential = orientations - (orientations * radial).sum(axis=1, keepdims=True) * radial
    return tangential / np.linalg.norm(tangential, axis=1, keepdims=True)


def _background_dipoles(rng: np.random.Generator, n_dipoles: int) -> tuple[np.ndarray, np.ndarray]:
    """Random cortical-depth positions and orientations over the upper head, reference head."""
    directions = rng.standard_normal((4 * n_dipoles, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # keep the part of the head a helmet covers (above roughly the ear canal)
    directions = directions[directions[:, 2] > -0.25][:n_dipoles]
    depth = rng.uniform(0.55, 0.8, size=(len(directions), 1)) * REFERENCE_HEAD_RADIUS
    return directions * depth, rng.standard_normal((len(directions), 3))


def place_sources(
    geometry: SensorGeometry, rng: np.random.Generator, n_background: int = 48
) -> PlacedSources:
    """Place the canonical and background dipoles in the head and compute their forward fields.

    The forward solution is computed once, for all dipoles together, with MNE
    (:func:`mne.make_forward_solution` on a discrete source space and a
    :func:`mne.make_sphere_model` head), so a whole cohort shares one forward computation.

    Parameters
    ----------
    geometry : SensorGeometry
        The sensor array and head sphere.
    rng : numpy.random.Generator
        Draws the background dipoles.
    n_background : int
        Number of distributed background dipoles that carry the 1/f activity.

    Returns
    -------
    sources : PlacedSources
        Names, positions (m), orientations and the gain (T or T/m per A*m).
    """
    scale = geometry.head_radius / REFERENCE_HEAD_RADIUS
    offsets = np.array([spec.offset for spec in CANONICAL_DIPOLES])
    orientations = np.array([spec.orientation for spec in CANONICAL_DIPOLES], dtype=float)
    background_offsets, background_orientations = _background_dipoles(rng, n_background)
    offsets = np.vstack([offsets, background_offsets]) * scale
    orientations = _tangential(np.vstack([orientations, background_orientations]), offsets)
    positions = geometry.origin + offsets
    names = [spec.name for spec in CANONICAL_DIPOLES]
    names += [f"background_{i:03d}" for i in range(len(background_offsets))]

    sphere = mne.make_sphere_model(
        r0=geometry.origin, head_radius=geometry.head_radius, relative_radii=(0.9, 0.92, 0.97, 1.0),
        verbose="error",
    )  # fmt: skip
    src = mne.setup_volume_source_space(
        pos={"rr": positions, "nn": orientations}, sphere=sphere, verbose="error"
    )
    # the sensors are given in the head frame through dev_head_t, so head and MRI coincide
    fwd = mne.make_forward_solution(
        geometry.info, trans=None, src=src, bem=sphere, meg=True, eeg=False, verbose="error"
    )
    if fwd["nsource"] != len(positions):
        raise RuntimeError(
            f"the forward model kept {fwd['nsource']} of {len(positions)} dipoles; "
            "every dipole should lie inside the head sphere"
        )
    free_gain = fwd["sol"]["data"].reshape(len(geometry.info["ch_names"]), len(positions), 3)
    gain = np.einsum("cdk,dk->cd", free_gain, orientations)
    logger.info("Forward model: %d channels x %d dipoles", gain.shape[0], gain.shape[1])
    return PlacedSources(names=names, positions=positions, orientations=orientations, gain=gain)


def _frequencies(n_times: int, sfreq: float) -> np.ndarray:
    return np.fft.rfftfreq(n_times, d=1.0 / sfreq)


def _unit_std(signals: np.ndarray) -> np.ndarray:
    return signals / signals.std(axis=-1, keepdims=True)


def colored_noise(
    rng: np.random.Generator,
    n_signals: int,
    n_times: int,
    sfreq: float,
    exponent: float | np.ndarray = 1.0,
    knee_hz: float = 1.0,
) -> np.ndarray:
    """Gaussian noise with a ``1 / f ** exponent`` power spectrum, unit standard deviation.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    n_signals, n_times : int
        Output shape.
    sfreq : float
        Sampling rate, Hz.
    exponent : float | numpy.ndarray
        Spectral exponent (1 is pink noise); one per signal if an array.
    knee_hz : float
        Below this frequency the spectrum flattens, so slow drifts stay bounded, Hz.

    Returns
    -------
    signals : numpy.ndarray, shape (n_signals, n_times)
    """
    freqs = _frequencies(n_times, sfreq)
    exponent = np.broadcast_to(np.asarray(exponent, dtype=float), (n_signals,))[:, None]
    shape = (freqs**2 + knee_hz**2) ** (-exponent / 4.0)
    shape[:, 0] = 0.0
    spectrum = rng.standard_normal((n_signals, freqs.size)) + 1j * rng.standard_normal(
        (n_signals, freqs.size)
    )
    return _unit_std(np.fft.irfft(spectrum * shape, n=n_times, axis=-1))


def narrowband_noise(
    rng: np.random.Generator,
    n_signals: int,
    n_times: int,
    sfreq: float,
    peak_hz: float,
    bandwidth_hz: float = 0.8,
) -> np.ndarray:
    """A waxing and waning rhythm: noise with a Gaussian spectral peak, unit standard deviation.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    n_signals, n_times : int
        Output shape.
    sfreq : float
        Sampling rate, Hz.
    peak_hz : float
        Centre of the spectral peak, Hz.
    bandwidth_hz : float
        Standard deviation of the Gaussian amplitude spectrum, Hz.

    Returns
    -------
    signals : numpy.ndarray, shape (n_signals, n_times)
    """
    freqs = _frequencies(n_times, sfreq)
    shape = np.exp(-0.5 * ((freqs - peak_hz) / bandwidth_hz) ** 2)
    spectrum = rng.standard_normal((n_signals, freqs.size)) + 1j * rng.standard_normal(
        (n_signals, freqs.size)
    )
    return _unit_std(np.fft.irfft(spectrum * shape, n=n_times, axis=-1))


def evoked_template(
    sfreq: float, components: list[tuple[float, float, float]], duration: float = 0.5
) -> np.ndarray:
    """Evoked source waveform: a sum of Gaussian deflections starting at stimulus onset.

    Parameters
    ----------
    sfreq : float
        Sampling rate, Hz.
    components : list of (latency, width, amplitude)
        Peak latency (s), Gaussian standard deviation (s) and signed peak moment (A*m) of each
        component.
    duration : float
        Length of the template, s.

    Returns
    -------
    template : numpy.ndarray, shape (round(duration * sfreq),)
        Dipole moment after the stimulus, A*m.
    """
    times = np.arange(int(round(duration * sfreq))) / sfreq
    template = np.zeros_like(times)
    for latency, width, amplitude in components:
        template += amplitude * np.exp(-0.5 * ((times - latency) / width) ** 2)
    return template


def place_responses(
    n_times: int, onsets: np.ndarray, gains: np.ndarray, template: np.ndarray
) -> np.ndarray:
    """Source time course of one dipole that answers each stimulus with a scaled template.

    Parameters
    ----------
    n_times : int
        Length of the run, samples.
    onsets : numpy.ndarray of int
        Stimulus onsets, samples.
    gains : numpy.ndarray of float
        Amplitude factor of each response (habituation and trial-to-trial variability).
    template : numpy.ndarray
        Response to a stimulus at amplitude factor 1, A*m.

    Returns
    -------
    moment : numpy.ndarray, shape (n_times,)
        Dipole moment, A*m.
    """
    impulses = np.zeros(n_times)
    np.add.at(impulses, onsets, gains)
    return fftconvolve(impulses, template)[:n_times]


def sensor_noise(
    rng: np.random.Generator, ch_types: list[str], n_times: int, sfreq: float
) -> np.ndarray:
    """White sensor noise at ``MAG_NOISE_DENSITY`` / ``GRAD_NOISE_DENSITY``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    ch_types : list of str
        MNE channel type of each sensor (``"mag"`` or ``"grad"``).
    n_times : int
        Number of samples.
    sfreq : float
        Sampling rate, Hz.

    Returns
    -------
    noise : numpy.ndarray, shape (n_channels, n_times)
        T for magnetometers, T/m for gradiometers.
    """
    density = np.where(np.asarray(ch_types) == "grad", GRAD_NOISE_DENSITY, MAG_NOISE_DENSITY)
    # white noise of density d (one-sided) over a band of sfreq / 2 has a std of d*sqrt(sfreq/2)
    scale = density * np.sqrt(sfreq / 2.0)
    return rng.standard_normal((len(ch_types), n_times)) * scale[:, None]
