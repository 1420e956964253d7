"""MEG sensor types and geometry, read from an MNE ``info``.

Sensor type codes are the indices of :data:`megfm_hf.modeling.configuration_megfm.SENSOR_TYPES`:
0 magnetometer, 1 planar gradiometer, 2 axial gradiometer, 3 optically pumped magnetometer (OPM).
The code comes from the FIFF coil type, not from MNE's channel type, because MNE types CTF, KIT
and BTi axial gradiometers as ``"mag"``.

Geometry is six numbers per sensor: the position of the coil centre in metres (``loc[0:3]``) and a
unit orientation. For magnetometers, axial gradiometers and OPMs the orientation is the coil normal
(``loc[9:12]``). For planar gradiometers it is the direction along which the gradient is measured
(``loc[3:6]``), so the two gradiometers sharing a site (same position, same normal) get different
orientations. Coordinates are head coordinates when the recording has a device-to-head transform
(``info["dev_head_t"]``), device coordinates otherwise. An identity transform counts as none: MNE
sets it when the head position is unknown (KIT/Ricoh files read without marker coils, for
example), so those positions are device coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np
from mne.io.constants import FIFF

from ..modeling.configuration_megfm import SENSOR_TYPES
from .errors import NoMEGSensorsError, UnknownSensorTypeError

MAGNETOMETER = SENSOR_TYPES.index("magnetometer")
PLANAR_GRADIOMETER = SENSOR_TYPES.index("planar_gradiometer")
AXIAL_GRADIOMETER = SENSOR_TYPES.index("axial_gradiometer")
OPM = SENSOR_TYPES.index("opm")

#: FIFF coil type -> sensor type code, for every MEG (non-reference) coil MNE knows.
COIL_TYPE_TO_SENSOR_TYPE: dict[int, int] = {
    # MEGIN/Elekta/Neuromag Vectorview and TRIUX
    int(FIFF.FIFFV_COIL_VV_MAG_W): MAGNETOMETER,
    int(FIFF.FIFFV_COIL_VV_MAG_T1): MAGNETOMETER,
    int(FIFF.FIFFV_COIL_VV_MAG_T2): MAGNETOMETER,
    int(FIFF.FIFFV_COIL_VV_MAG_T3): MAGNETOMETER,
    int(FIFF.FIFFV_COIL_VV_MAG_T4): MAGNETOMETER,
    int(FIFF.FIFFV_COIL_VV_PLANAR_W): PLANAR_GRADIOMETER,
    int(FIFF.FIFFV_COIL_VV_PLANAR_T1): PLANAR_GRADIOMETER,
    int(FIFF.FIFFV_COIL_VV_PLANAR_T2): PLANAR_GRADIOMETER,
    int(FIFF.FIFFV_COIL_VV_PLANAR_T3): PLANAR_GRADIOMETER,
    int(FIFF.FIFFV_COIL_VV_PLANAR_T4): PLANAR_GRADIOMETER,
    # Neuromag-122 and -24 are planar gradiometer systems
    int(FIFF.FIFFV_COIL_NM_122): PLANAR_GRADIOMETER,
    int(FIFF.FIFFV_COIL_NM_24): PLANAR_GRADIOMETER,
    # generic coils
    int(FIFF.FIFFV_COIL_POINT_MAGNETOMETER): MAGNETOMETER,
    int(FIFF.FIFFV_COIL_AXIAL_GRAD_5CM): AXIAL_GRADIOMETER,
    int(FIFF.FIFFV_COIL_NM_MCG_AXIAL): AXIAL_GRADIOMETER,
    # BTi/4D Magnes
    int(FIFF.FIFFV_COIL_MAGNES_MAG): MAGNETOMETER,
    int(FIFF.FIFFV_COIL_MAGNES_GRAD): AXIAL_GRADIOMETER,
    # CTF
    int(FIFF.FIFFV_COIL_CTF_GRAD): AXIAL_GRADIOMETER,
    # KIT/Yokogawa/Ricoh
    int(FIFF.FIFFV_COIL_KIT_GRAD): AXIAL_GRADIOMETER,
    # BabyMEG, Artemis 123, KRISS, Compumedics
    int(FIFF.FIFFV_COIL_BABY_GRAD): AXIAL_GRADIOMETER,
    int(FIFF.FIFFV_COIL_BABY_MAG): MAGNETOMETER,
    int(FIFF.FIFFV_COIL_ARTEMIS123_GRAD): AXIAL_GRADIOMETER,
    int(FIFF.FIFFV_COIL_KRISS_GRAD): AXIAL_GRADIOMETER,
    int(FIFF.FIFFV_COIL_COMPUMEDICS_ADULT_GRAD): AXIAL_GRADIOMETER,
    int(FIFF.FIFFV_COIL_COMPUMEDICS_PEDIATRIC_GRAD): AXIAL_GRADIOMETER,
    # OPM: QuSpin, FieldLine, Kernel
    int(FIFF.FIFFV_COIL_QUSPIN_ZFOPM_MAG): OPM,
    int(FIFF.FIFFV_COIL_QUSPIN_ZFOPM_MAG2): OPM,
    int(FIFF.FIFFV_COIL_FIELDLINE_OPM_MAG_GEN1): OPM,
    int(FIFF.FIFFV_COIL_KERNEL_OPM_MAG_GEN1): OPM,
}


@dataclass(frozen=True)
class SensorArray:
    """The MEG sensors of one recording, in channel order.

    Attributes
    ----------
    ch_names : tuple of str
        Channel names.
    types : np.ndarray, shape (n_sensors,), int64
        Sensor type codes (indices of ``SENSOR_TYPES``).
    positions : np.ndarray, shape (n_sensors, 6), float32
        Position in metres (3) and unit orientation (3); see the module notes.
    coordinate_frame : str
        ``"head"`` or ``"meg"`` (device), the frame of ``positions``.
    """

    ch_names: tuple[str, ...]
    types: np.ndarray
    positions: np.ndarray
    coordinate_frame: str

    @property
    def n_sensors(self) -> int:
        """Number of sensors."""
        return len(self.ch_names)


def sensor_type_code(ch: dict, path: str | Path | None = None) -> int:
    """Return the sensor type code of one MNE channel.

    Parameters
    ----------
    ch : dict
        One entry of ``info["chs"]``.
    path : str | Path | None
        The recording, named in the error.

    Returns
    -------
    code : int
        Index into ``SENSOR_TYPES``.

    Notes
    -----
    CTF stores the gradient-compensation grade in the upper 16 bits of the coil type
    (``201609`` is ``5001`` at grade 3); only the lower 16 bits name the coil.
    """
    coil_type = int(ch["coil_type"]) & 0xFFFF
    try:
        return COIL_TYPE_TO_SENSOR_TYPE[coil_type]
    except KeyError:
        known = ", ".join(str(k) for k in sorted(COIL_TYPE_TO_SENSOR_TYPE))
        raise UnknownSensorTypeError(
            path,
            f"MEG channel {ch['ch_name']!r} has coil type {coil_type}, which is not a known "
            f"magnetometer, gradiometer or OPM coil (known coil types: {known})",
        ) from None


def pick_meg_sensors(info: mne.Info, path: str | Path | None = None) -> np.ndarray:
    """Return the indices of the MEG sensors of ``info``, reference sensors left out.

    Bad channels are kept (they become masked sensors, not missing ones).

    Parameters
    ----------
    info : mne.Info
        The measurement info.
    path : str | Path | None
        The recording, named in the error.

    Returns
    -------
    picks : np.ndarray of int
        Channel indices in ``info["ch_names"]`` order.

    Raises
    ------
    NoMEGSensorsError
        When no MEG sensor is present (for example an EEG-only recording).
    """
    picks = mne.pick_types(info, meg=True, ref_meg=False, exclude=[])
    if len(picks) == 0:
        kinds = sorted(set(info.get_channel_types()))
        raise NoMEGSensorsError(
            path,
            f"no MEG sensors found (channel types present: {', '.join(kinds) or 'none'}); "
            "expected magnetometers, gradiometers or OPM sensors",
        )
    return picks


def sensor_array(info: mne.Info, path: str | Path | None = None) -> SensorArray:
    """Read types and geometry of all channels of ``info`` (which must all be MEG sensors).

    Parameters
    ----------
    info : mne.Info
        Info holding MEG sensors only (see :func:`pick_meg_sensors`).
    path : str | Path | None
        The recording, named in errors.

    Returns
    -------
    sensors : SensorArray
        Types, positions (metres) and unit orientations; head coordinates when
        ``info["dev_head_t"]`` is set and not the identity, device coordinates (``"meg"``)
        otherwise.
    """
    types = np.array([sensor_type_code(ch, path) for ch in info["chs"]], dtype=np.int64)
    loc = np.array([ch["loc"][:12] for ch in info["chs"]], dtype=np.float64)
    position = loc[:, 0:3]
    orientation = np.where((types == PLANAR_GRADIOMETER)[:, None], loc[:, 3:6], loc[:, 9:12])
    if not np.all(np.isfinite(loc)) or np.allclose(position, 0.0):
        raise UnknownSensorTypeError(
            path, "MEG sensor locations are missing (info['chs'][i]['loc'] is zero or NaN)"
        )
    norms = np.linalg.norm(orientation, axis=1)
    if np.any(norms < 1e-6):
        bad = info["ch_names"][int(np.argmin(norms))]
        raise UnknownSensorTypeError(path, f"MEG channel {bad!r} has no coil orientation in loc")
    orientation = orientation / norms[:, None]

    dev_head_t = info["dev_head_t"]
    frame = "meg"
    trans = None if dev_head_t is None else np.asarray(dev_head_t["trans"], dtype=np.float64)
    if trans is not None and not np.allclose(trans, np.eye(4)):
        position = position @ trans[:3, :3].T + trans[:3, 3]
        orientation = orientation @ trans[:3, :3].T
        frame = "head"
    positions = np.concatenate([position, orientation], axis=1).astype(np.float32)
    return SensorArray(
        ch_names=tuple(info["ch_names"]),
        types=types,
        positions=positions,
        coordinate_frame=frame,
    )


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through a set of points.

    Parameters
    ----------
    points : numpy.ndarray, shape (n_points, 3)
        Points, m.

    Returns
    -------
    center : numpy.ndarray, shape (3,)
        Centre of the sphere, m.
    radius : float
        Radius, m.
    """
    design = np.column_stack([2.0 * points, np.ones(len(points))])
    target = (points**2).sum(axis=1)
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    center = solution[:3]
    return center, float(np.sqrt(solution[3] + center @ center))


__all__ = [
    "AXIAL_GRADIOMETER",
    "COIL_TYPE_TO_SENSOR_TYPE",
    "MAGNETOMETER",
    "OPM",
    "PLANAR_GRADIOMETER",
    "SENSOR_TYPES",
    "SensorArray",
    "fit_sphere",
    "pick_meg_sensors",
    "sensor_array",
    "sensor_type_code",
]
