"""Sensor arrays for the simulated cohort: a built-in Neuromag-like helmet or one read from a file.

Every array is returned as a :class:`SensorGeometry`: an MNE ``info`` holding only MEG sensors
(positions, orientations and coil types that MNE's forward model understands), a device-to-head
transform, digitised fiducials, and the sphere (origin and radius, head coordinates, metres) that
approximates the head inside that array.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np
from mne.io.constants import FIFF

from ..data.errors import UnreadableRecordingError
from ..data.sensors import fit_sphere

logger = logging.getLogger(__name__)

#: number of sensor positions of the built-in helmet (one magnetometer and two gradiometers each)
N_BUILTIN_POSITIONS = 102
#: distance of the built-in helmet's sensors from the head-sphere origin, m
BUILTIN_HELMET_RADIUS = 0.12
#: origin of the built-in head sphere in head coordinates, m (MNE's usual default)
BUILTIN_ORIGIN = (0.0, 0.0, 0.04)
#: largest polar angle of the built-in helmet, measured from +z, degrees
BUILTIN_MAX_POLAR_DEG = 105.0
#: gap between the sensor surface and the conducting sphere, m (scalp, skull and dewar)
SENSOR_TO_HEAD_GAP = 0.03
#: fiducials used when a geometry carries none (head coordinates, m)
DEFAULT_FIDUCIALS = {
    "nasion": (0.0, 0.10, 0.0),
    "lpa": (-0.08, 0.0, 0.0),
    "rpa": (0.08, 0.0, 0.0),
}

_FIF_SUFFIXES = (".fif", ".fif.gz")
_KIT_SUFFIXES = (".sqd", ".con")
#: MEG system of each family of coil types (prefix of the ``FIFF.FIFFV_COIL_*`` constant name)
_COIL_SYSTEMS = (
    ("VV_", "MEGIN/Elekta Neuromag Vectorview/TRIUX"),
    ("NM_122", "Neuromag-122"),
    ("CTF_", "CTF"),
    ("KIT_", "KIT/Yokogawa/Ricoh"),
    ("MAGNES_", "4D Neuroimaging/BTi Magnes"),
    ("BABY_", "BabyMEG/BabySQUID"),
    ("ARTEMIS123_", "Artemis 123"),
    ("QUSPIN_", "QuSpin OPM"),
    ("FIELDLINE_", "FieldLine OPM"),
    ("KERNEL_", "Kernel OPM"),
    ("KRISS_", "KRISS"),
    ("COMPUMEDICS_", "Compumedics"),
)


@dataclass(frozen=True)
class SensorGeometry:
    """A MEG sensor array and the spherical head it surrounds.

    Attributes
    ----------
    info : mne.Info
        MEG sensors only (no reference, stimulus or EEG channels), no projectors or compensation.
        Channel locations are in device coordinates, as in any MNE ``info``.
    origin : numpy.ndarray, shape (3,)
        Centre of the spherical head model in head coordinates, m.
    head_radius : float
        Radius of the spherical head model, m.
    source : str
        ``"builtin"`` or the path of the recording the sensors were taken from.
    """

    info: mne.Info
    origin: np.ndarray
    head_radius: float
    source: str

    @property
    def ch_names(self) -> list[str]:
        """Names of the MEG sensors."""
        return list(self.info["ch_names"])

    def sensor_positions(self) -> np.ndarray:
        """Sensor positions in head coordinates, m, shape (n_sensors, 3)."""
        positions = np.array([ch["loc"][:3] for ch in self.info["chs"]])
        trans = self.info["dev_head_t"]["trans"]
        return positions @ trans[:3, :3].T + trans[:3, 3]


def _tangent_frame(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``normal`` and to each other (longitude, latitude)."""
    east = np.cross([0.0, 0.0, 1.0], normal)
    if np.linalg.norm(east) < 1e-8:  # at the pole any horizontal direction will do
        east = np.array([1.0, 0.0, 0.0])
    east /= np.linalg.norm(east)
    north = np.cross(normal, east)
    return east, north


def _helmet_normals(n_positions: int, max_polar_deg: float) -> np.ndarray:
    """Evenly spread unit vectors over a spherical cap around +z (a Fibonacci spiral)."""
    index = np.arange(n_positions) + 0.5
    cos_max = np.cos(np.deg2rad(max_polar_deg))
    # equal-area steps in cos(polar angle) give an even density over the cap
    cos_polar = 1.0 - index / n_positions * (1.0 - cos_max)
    sin_polar = np.sqrt(1.0 - cos_polar**2)
    azimuth = index * np.pi * (3.0 - np.sqrt(5.0))
    return np.column_stack([sin_polar * np.cos(azimuth), sin_polar * np.sin(azimuth), cos_polar])


def make_builtin_helmet(
    sfreq: float = 250.0,
    n_positions: int = N_BUILTIN_POSITIONS,
    radius: float = BUILTIN_HELMET_RADIUS,
) -> mne.Info:
    """Create a Neuromag-like helmet of magnetometers and planar gradiometers.

    Parameters
    ----------
    sfreq : float
        Sampling rate stored in the returned ``info``, Hz.
    n_positions : int
        Number of sensor positions; each holds one magnetometer and two orthogonal planar
        gradiometers, as in a Neuromag Vectorview / MEGIN TRIUX system (102 gives 306 sensors).
    radius : float
        Distance of the sensors from the head-sphere origin ``BUILTIN_ORIGIN``, m.

    Returns
    -------
    info : mne.Info
        306 MEG channels by default, named ``MEG 0011`` (magnetometer), ``MEG 0012`` and
        ``MEG 0013`` (gradiometers) and so on, with coil types ``FIFFV_COIL_VV_MAG_T3`` and
        ``FIFFV_COIL_VV_PLANAR_T1``, an identity device-to-head transform (the sensors are
        defined directly in head coordinates) and digitised fiducials.

    Notes
    -----
    The sensors cover a spherical cap up to ``BUILTIN_MAX_POLAR_DEG`` degrees from the vertex,
    which reaches below the temporal lobes, so auditory sources are well sampled.
    """
    if not (isinstance(n_positions, int | np.integer) and n_positions > 0):
        raise ValueError(f"n_positions must be a positive integer, got {n_positions!r}")
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive distance in metres, got {radius!r}")
    normals = _helmet_normals(int(n_positions), BUILTIN_MAX_POLAR_DEG)
    origin = np.asarray(BUILTIN_ORIGIN)
    ch_names: list[str] = []
    ch_types: list[str] = []
    for index in range(int(n_positions)):
        stem = f"MEG {index + 1:03d}"
        ch_names += [f"{stem}1", f"{stem}2", f"{stem}3"]
        ch_types += ["mag", "grad", "grad"]
    info = mne.create_info(ch_names, sfreq, ch_types)
    with info._unlock():
        for index, normal in enumerate(normals):
            position = origin + radius * normal
            east, north = _tangent_frame(normal)
            # a gradiometer measures the field gradient along its coil's x axis
            frames = [(east, north), (east, north), (north, -east)]
            coil_types = [FIFF.FIFFV_COIL_VV_MAG_T3] + [FIFF.FIFFV_COIL_VV_PLANAR_T1] * 2
            for offset, ((ex, ey), coil_type) in enumerate(zip(frames, coil_types, strict=True)):
                ch = info["chs"][3 * index + offset]
                ch["loc"] = np.concatenate([position, ex, ey, normal])
                ch["coil_type"] = coil_type
                ch["coord_frame"] = FIFF.FIFFV_COORD_DEVICE
        info["dev_head_t"] = mne.transforms.Transform("meg", "head", np.eye(4))
    _set_fiducials(info, DEFAULT_FIDUCIALS)
    return info


def _set_fiducials(info: mne.Info, fiducials: dict[str, tuple[float, float, float]]) -> None:
    montage = mne.channels.make_dig_montage(
        nasion=fiducials["nasion"], lpa=fiducials["lpa"], rpa=fiducials["rpa"], coord_frame="head"
    )
    with info._unlock():
        info["dig"] = montage.dig


def _read_info(path: Path) -> mne.Info:
    name = path.name.lower()
    if path.is_dir():
        if not name.endswith(".ds"):
            raise ValueError(
                f"geometry {str(path)!r} is a folder but not a CTF .ds folder; expected a FIF "
                f"file (raw or evoked), a CTF .ds folder or a KIT .sqd/.con file"
            )
        kind, reader = "CTF .ds folder", mne.io.read_raw_ctf
    elif name.endswith(_FIF_SUFFIXES):
        kind, reader = "FIF file", mne.io.read_info
    elif name.endswith(_KIT_SUFFIXES):
        kind, reader = "KIT file", mne.io.read_raw_kit
    else:
        raise ValueError(
            f"geometry {str(path)!r} has an unsupported format; expected a FIF file (.fif, "
            f".fif.gz; raw or evoked), a CTF .ds folder or a KIT .sqd/.con file"
        )
    try:
        info = reader(path, verbose="error")
    except Exception as err:  # MNE's readers fail on damaged files with any kind of error
        raise UnreadableRecordingError(
            path, f"cannot be read as a {kind} ({type(err).__name__}: {err})"
        ) from err
    return info if isinstance(info, mne.Info) else info.info


def write_builtin_helmet(
    path: str | Path, sfreq: float = 250.0, n_positions: int = N_BUILTIN_POSITIONS
) -> Path:
    """Write the built-in helmet's sensor array as a short FIF file, for ``geometry=``.

    A helmet with fewer positions (e.g. 40 positions, 120 sensors) keeps simulated cohorts and
    models small enough for quick CPU runs while keeping the magnetometer + two planar
    gradiometer layout.

    Parameters
    ----------
    path : str | Path
        Output FIF file (``*_raw.fif``).
    sfreq : float
        Sampling rate of the file, Hz.
    n_positions : int
        Sensor positions (three sensors each).

    Returns
    -------
    Path
        ``path``.
    """
    info = make_builtin_helmet(sfreq=sfreq, n_positions=n_positions)
    raw = mne.io.RawArray(np.zeros((len(info["ch_names"]), int(2 * sfreq))), info, verbose="error")
    raw.save(path, overwrite=True, verbose="error")
    return Path(path)


def read_sensor_info(path: str | Path, sfreq: float = 250.0) -> mne.Info:
    """Read the MEG sensor array of a recording into a clean, MEG-only ``info``.

    Parameters
    ----------
    path : str | pathlib.Path
        A FIF file (raw or evoked), a CTF ``.ds`` folder or a KIT ``.sqd`` / ``.con`` file.
    sfreq : float
        Sampling rate stored in the returned ``info``, Hz.

    Returns
    -------
    info : mne.Info
        The MEG sensors (reference sensors excluded, bad channels kept) with their locations and
        coil types; compensation grades are removed from the coil types because the simulation
        writes uncompensated data. The device-to-head transform is kept (identity when the file
        has none); only the fiducials of the digitisation are kept, and default fiducials are
        used when the file has none. Nothing that identifies the recording or the person is kept.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the format is not supported or the file holds no MEG sensors;
        :class:`~megfm_hf.data.errors.UnreadableRecordingError` (a ``ValueError``) if MNE's
        reader fails on it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"geometry file {str(path)!r} does not exist; expected a FIF file, a CTF .ds folder "
            f"or a KIT .sqd/.con file"
        )
    source_info = _read_info(path)
    picks = mne.pick_types(source_info, meg=True, ref_meg=False, exclude=[])
    if len(picks) == 0:
        raise ValueError(
            f"geometry file {str(path)!r} holds no MEG sensors (channel types found: "
            f"{sorted(set(source_info.get_channel_types()))}); expected a MEG recording"
        )
    source_chs = [source_info["chs"][pick] for pick in picks]
    ch_names = [ch["ch_name"] for ch in source_chs]
    ch_types = [mne.channel_type(source_info, pick) for pick in picks]
    info = mne.create_info(ch_names, sfreq, ch_types)
    with info._unlock():
        for ch, source_ch in zip(info["chs"], source_chs, strict=True):
            ch["loc"] = np.array(source_ch["loc"], dtype=float)
            # the upper 16 bits encode the CTF compensation grade, which simulated data lack
            ch["coil_type"] = int(source_ch["coil_type"]) & 0xFFFF
            ch["coord_frame"] = FIFF.FIFFV_COORD_DEVICE
        dev_head_t = source_info["dev_head_t"]
        trans = np.eye(4) if dev_head_t is None else np.array(dev_head_t["trans"])
        info["dev_head_t"] = mne.transforms.Transform("meg", "head", trans)
    _set_fiducials(info, _fiducials_from(source_info))
    return info


def _fiducials_from(info: mne.Info) -> dict[str, tuple[float, float, float]]:
    found: dict[str, tuple[float, float, float]] = {}
    names = {
        FIFF.FIFFV_POINT_NASION: "nasion",
        FIFF.FIFFV_POINT_LPA: "lpa",
        FIFF.FIFFV_POINT_RPA: "rpa",
    }
    for point in info["dig"] or []:
        if (
            point["kind"] == FIFF.FIFFV_POINT_CARDINAL
            and point["coord_frame"] == FIFF.FIFFV_COORD_HEAD
            and point["ident"] in names
        ):
            found[names[point["ident"]]] = tuple(float(v) for v in point["r"])
    return found if len(found) == 3 else dict(DEFAULT_FIDUCIALS)


def _coil_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for constant in sorted(dir(FIFF)):
        if constant.startswith("FIFFV_COIL_"):
            names.setdefault(int(getattr(FIFF, constant)), constant.removeprefix("FIFFV_COIL_"))
    return names


def describe_sensor_array(geometry: SensorGeometry) -> dict:
    """What the sensor array is, without anything that identifies the recording it came from.

    Parameters
    ----------
    geometry : SensorGeometry
        The sensor array.

    Returns
    -------
    description : dict
        ``source`` (``"builtin"`` or ``"recording"``: never the file name, which often holds a
        subject identifier), ``system`` (the MEG system(s) whose coil types the sensors have,
        e.g. ``"CTF"``; the built-in helmet is named as such), ``n_sensors`` (count per MNE
        channel type) and ``coil_types`` (count per coil type, named as MNE's ``FIFFV_COIL_*``
        constants without the prefix, e.g. ``"CTF_GRAD"``). Sensor counts and coil types are
        properties of the device model, shared by every recording made with it.
    """
    names = _coil_names()
    coil_types: dict[str, int] = {}
    for ch in geometry.info["chs"]:
        code = int(ch["coil_type"]) & 0xFFFF
        coil = names.get(code, f"coil type {code}")
        coil_types[coil] = coil_types.get(coil, 0) + 1
    n_sensors: dict[str, int] = {}
    for ch_type in geometry.info.get_channel_types():
        n_sensors[ch_type] = n_sensors.get(ch_type, 0) + 1
    if geometry.source == "builtin":
        system = "built-in Neuromag-like helmet"
    else:
        systems = {
            label
            for coil in coil_types
            for prefix, label in _COIL_SYSTEMS
            if coil.startswith(prefix)
        }
        system = " + ".join(sorted(systems)) or "unknown"
    return {
        "source": "builtin" if geometry.source == "builtin" else "recording",
        "system": system,
        "n_sensors": dict(sorted(n_sensors.items())),
        "coil_types": dict(sorted(coil_types.items())),
    }


def load_geometry(path: str | Path | None = None, sfreq: float = 250.0) -> SensorGeometry:
    """Return the sensor array and head sphere used by the simulation.

    Parameters
    ----------
    path : str | pathlib.Path | None
        A recording to take the sensor array from (see :func:`read_sensor_info`), or ``None``
        for the built-in 306-sensor helmet (:func:`make_builtin_helmet`).
    sfreq : float
        Sampling rate stored in the returned ``info``, Hz.

    Returns
    -------
    geometry : SensorGeometry
        The sensors and the head sphere. For a recording, the sphere is centred on the
        least-squares sphere through the sensors (head coordinates) and its radius is that
        sphere's radius less ``SENSOR_TO_HEAD_GAP``, which works whether or not the file
        carries a real device-to-head transform.
    """
    if path is None:
        info = make_builtin_helmet(sfreq=sfreq)
        return SensorGeometry(
            info=info,
            origin=np.asarray(BUILTIN_ORIGIN, dtype=float),
            head_radius=BUILTIN_HELMET_RADIUS - SENSOR_TO_HEAD_GAP,
            source="builtin",
        )
    info = read_sensor_info(path, sfreq=sfreq)
    geometry = SensorGeometry(info=info, origin=np.zeros(3), head_radius=0.0, source=str(path))
    center, radius = fit_sphere(geometry.sensor_positions())
    head_radius = radius - SENSOR_TO_HEAD_GAP
    if not 0.04 <= head_radius <= 0.15:
        raise ValueError(
            f"geometry file {str(path)!r}: the sensors lie on a sphere of radius {radius:.3f} m, "
            f"expected a helmet of radius 0.07-0.18 m around the head"
        )
    logger.info(
        "Read %d MEG sensors from %s; head sphere at %s m, radius %.3f m",
        len(info["ch_names"]),
        path,
        np.round(center, 4),
        head_radius,
    )
    return SensorGeometry(info=info, origin=center, head_radius=head_radius, source=str(path))
