"""Read MEG recordings of every vendor MNE supports.

One entry point, :func:`read_recording`, picks the reader from the path:

========================================  ==========================================
path                                      reader
========================================  ==========================================
``*.fif``, ``*.fif.gz`` (raw)             :func:`mne.io.read_raw_fif` (MEGIN/Neuromag
                                          Vectorview, TRIUX, Neuromag-122, converted
                                          CTF, OPM FIF)
``*-ave.fif``, ``*_ave.fif`` (evoked)     :func:`mne.read_evokeds` (one per condition)
``*.ds`` folder                           :func:`mne.io.read_raw_ctf`; an averaged
                                          dataset becomes one evoked response
``*.con``, ``*.sqd``                      :func:`mne.io.read_raw_kit` (marker, digitiser
                                          and head-shape files beside it are used)
BTi/4D folder or ``c,rf*`` file           :func:`mne.io.read_raw_bti`
a file inside a BIDS folder               :func:`mne_bids.read_raw_bids`
anything else                             :func:`mne.io.read_raw`
========================================  ==========================================

Readers never load data (``preload=False``); preprocessing loads only the MEG sensors.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mne
import numpy as np

from .errors import RecordingNotFoundError, UnreadableRecordingError
from .windowing import annotation_onsets

logger = logging.getLogger(__name__)

Recording = mne.io.BaseRaw | mne.BaseEpochs | mne.Evoked | list[mne.Evoked]

_EVOKED_NAME = re.compile(r"([-_]ave)\.fif(\.gz)?$", re.IGNORECASE)
_BTI_PDF = re.compile(r"^c,rf", re.IGNORECASE)


def detect_format(path: str | Path) -> str:
    """Return the format name of ``path``.

    Parameters
    ----------
    path : str | Path
        File or folder.

    Returns
    -------
    fmt : str
        One of ``"fif"``, ``"evoked"``, ``"ctf"``, ``"kit"``, ``"bti"``, ``"bids"``, ``"other"``.
    """
    path = Path(path)
    name = path.name.lower()
    if _is_in_bids_folder(path):
        return "bids"
    if path.is_dir():
        if name.endswith(".ds"):
            return "ctf"
        if any(_BTI_PDF.match(p.name) for p in path.iterdir()):
            return "bti"
        return "other"
    if _EVOKED_NAME.search(name):
        return "evoked"
    if name.endswith((".fif", ".fif.gz")):
        return "fif"
    if name.endswith((".con", ".sqd")):
        return "kit"
    if _BTI_PDF.match(path.name):
        return "bti"
    return "other"


def _is_in_bids_folder(path: Path) -> bool:
    """True for ``sub-*/[ses-*/]meg/sub-*_meg.*`` files under a folder with dataset_description."""
    if path.parent.name != "meg" or not path.name.startswith("sub-"):
        return False
    if not re.search(r"_meg\.(fif|con|sqd|ds|pdf)", path.name) and "_meg" not in path.name:
        return False
    return any((parent / "dataset_description.json").is_file() for parent in path.parents)


def read_recording(
    path: str | Path,
    *,
    fmt: str | None = None,
    reader_kwargs: Mapping[str, Any] | None = None,
) -> mne.io.BaseRaw | list[mne.Evoked]:
    """Read a MEG recording without loading its data.

    Parameters
    ----------
    path : str | Path
        A file, a CTF ``.ds`` folder or a BTi folder.
    fmt : str | None
        Force a format (see :func:`detect_format`); detected from the path when ``None``.
    reader_kwargs : Mapping | None
        Extra keyword arguments for the MNE reader (for example ``stim="<", slope="+"`` for KIT).

    Returns
    -------
    recording : mne.io.BaseRaw | list of mne.Evoked
        A raw recording, or one evoked response per condition for evoked FIF files and
        averaged CTF datasets. A recording in several pieces (the trials of a CTF dataset, or
        pieces concatenated before it was saved) is returned as the concatenation of its pieces,
        so that it is resampled piece by piece (:func:`split_trials`,
        :func:`split_at_boundaries`).

    Raises
    ------
    RecordingNotFoundError
        When ``path`` does not exist.
    UnreadableRecordingError
        When the reader fails: unknown format, truncated or corrupted file.
    """
    path = Path(path)
    if not path.exists():
        raise RecordingNotFoundError(path, "file or folder does not exist")
    fmt = fmt or detect_format(path)
    kwargs = dict(reader_kwargs or {})
    try:
        recording = _read(path, fmt, kwargs)
    except (RecordingNotFoundError, UnreadableRecordingError):
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
        raise UnreadableRecordingError(
            path, f"cannot be read as {fmt} MEG data ({type(err).__name__}: {err})"
        ) from err
    if isinstance(recording, mne.io.BaseRaw):
        return split_at_boundaries(recording)
    return recording


def _read(path: Path, fmt: str, kwargs: dict[str, Any]) -> mne.io.BaseRaw | list[mne.Evoked]:
    if fmt == "evoked":
        return list(mne.read_evokeds(path, verbose="error", **kwargs))
    if fmt == "fif":
        return _read_fif(path, kwargs)
    if fmt == "ctf":
        return _ctf_recording(
            path, mne.io.read_raw_ctf(path, preload=False, verbose="error", **kwargs)
        )
    if fmt == "kit":
        return mne.io.read_raw_kit(
            path, preload=False, verbose="error", **_kit_side_files(path, kwargs)
        )
    if fmt == "bti":
        return _read_bti(path, kwargs)
    if fmt == "bids":
        return read_bids_recording(path, reader_kwargs=kwargs)
    return mne.io.read_raw(path, preload=False, verbose="error", **kwargs)


def _read_fif(path: Path, kwargs: dict[str, Any]) -> mne.io.BaseRaw | list[mne.Evoked]:
    try:
        return mne.io.read_raw_fif(path, preload=False, verbose="error", **kwargs)
    except ValueError as err:
        # a FIF file of averages has no raw data block; read it as evoked responses instead
        if "no raw data" in str(err).lower():
            return list(mne.read_evokeds(path, verbose="error"))
        raise


@dataclass(frozen=True)
class CTFHeader:
    """The fields of a CTF ``.res4`` header that tell an averaged dataset from a recording.

    Attributes
    ----------
    n_averaged : int
        Trials averaged into the data (0 for a recording).
    trial_samples : int
        Samples per trial.
    n_trials : int
    pre_trigger_samples : int
        Samples before the trigger in each trial.
    """

    n_averaged: int
    trial_samples: int
    n_trials: int
    pre_trigger_samples: int


def read_ctf_header(path: str | Path) -> CTFHeader:
    """Read the averaging fields of a CTF dataset's ``.res4`` file.

    MNE's CTF reader returns averaged datasets as continuous data and keeps these fields to
    itself; they sit at fixed offsets of the big-endian ``res4`` header (CTF MEG File Formats,
    ``meg41GeneralResRec``).

    Parameters
    ----------
    path : str | Path
        The ``.ds`` folder.

    Raises
    ------
    UnreadableRecordingError
        When the folder has no readable ``.res4`` header.
    """
    folder = Path(path)
    res4 = folder / f"{folder.stem}.res4"
    if not res4.is_file():
        found = sorted(folder.glob("*.res4"))
        if not found:
            raise UnreadableRecordingError(folder, "CTF dataset without a .res4 header file")
        res4 = found[0]
    header = res4.read_bytes()[:1320]
    if len(header) < 1320 or not header.startswith(b"MEG4"):
        raise UnreadableRecordingError(folder, f"{res4.name} is not a CTF MEG4 header")
    # head (8) + application name, data origin, data description (3 x 256)
    (n_averaged,) = struct.unpack_from(">h", header, 776)
    # + date and time strings (2 x 255): samples per trial, channels, padding to 8 bytes,
    # sampling rate, epoch time (2 x double), trials, padding to 4 bytes, pre-trigger samples
    (trial_samples,) = struct.unpack_from(">i", header, 1288)
    (n_trials,) = struct.unpack_from(">h", header, 1312)
    (pre_trigger,) = struct.unpack_from(">i", header, 1316)
    return CTFHeader(int(n_averaged), int(trial_samples), int(n_trials), int(pre_trigger))


def _ctf_recording(path: Path, raw: mne.io.BaseRaw) -> mne.io.BaseRaw | list[mne.Evoked]:
    """A CTF recording split into its trials, or an averaged dataset as one evoked response.

    An averaged dataset stores the average as its first trial (later trials hold derived
    traces, such as the plus-minus average); it is returned with its time axis from the
    trigger, so that it is windowed like an evoked FIF file.
    """
    header = read_ctf_header(path)
    if header.n_averaged <= 0:
        return split_trials(raw, header.trial_samples)
    if not 0 < header.trial_samples <= raw.n_times:
        raise UnreadableRecordingError(
            path,
            f"averaged CTF dataset with {header.trial_samples} samples per trial but "
            f"{raw.n_times} samples in all",
        )
    data = raw.get_data(start=0, stop=header.trial_samples)
    evoked = mne.EvokedArray(
        data,
        raw.info,
        tmin=-header.pre_trigger_samples / raw.info["sfreq"],
        nave=header.n_averaged,
        comment="average",
        verbose="error",
    )
    return [evoked]


BOUNDARY_DESCRIPTIONS = ("BAD boundary", "EDGE boundary")
"""The annotations :func:`mne.concatenate_raws` puts between concatenated recordings."""


def split_trials(raw: mne.io.BaseRaw, trial_samples: int) -> mne.io.BaseRaw:
    """Return a multi-trial (discontinuous) recording as the concatenation of its trials.

    A CTF dataset recorded in trials stores them one after the other; MNE reads them as one
    continuous recording. Returned as :func:`mne.concatenate_raws` of its trials instead, each
    boundary carries the ``"BAD boundary"`` and ``"EDGE boundary"`` annotations, so that filters
    treat the trials separately, resampling runs trial by trial (MNE resamples the pieces of a
    concatenated recording separately) and no window crosses from one trial into the next.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording, not loaded (``preload=False``); not modified.
    trial_samples : int
        Samples per trial; a recording of a single trial is returned unchanged.

    Returns
    -------
    raw : mne.io.BaseRaw
    """
    if not 0 < trial_samples < raw.n_times:
        return raw
    cuts = np.arange(trial_samples, raw.n_times, trial_samples)
    logger.info("recording split into %d trials of %d samples", len(cuts) + 1, trial_samples)
    return _concatenate_pieces(raw, cuts)


def split_at_boundaries(raw: mne.io.BaseRaw) -> mne.io.BaseRaw:
    """Return a recording saved from concatenated pieces as the concatenation of those pieces.

    :func:`mne.concatenate_raws` marks where one recording ends and the next begins with
    zero-duration ``"EDGE boundary"`` annotations. Once saved and read back, the recording is one
    piece again: filters still respect the boundaries, but resampling would run across them and
    ring at each jump. Split again at its boundaries, it is resampled piece by piece.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        A recording as read from one file, not loaded (``preload=False``); not modified.

    Returns
    -------
    raw : mne.io.BaseRaw
        ``raw`` itself when it has no boundary inside it, is loaded already or holds several
        pieces already.
    """
    if raw.preload or len(raw.filenames) > 1:
        return raw
    edges = [
        i
        for i, (description, duration) in enumerate(
            zip(raw.annotations.description, raw.annotations.duration, strict=True)
        )
        if description.upper().startswith("EDGE") and duration == 0
    ]
    onsets = annotation_onsets(raw)[edges]
    cuts = np.unique(np.round(onsets * raw.info["sfreq"]).astype(np.int64))
    cuts = cuts[(cuts > 0) & (cuts < raw.n_times)]
    if not len(cuts):
        return raw
    logger.info("recording split at %d boundaries between concatenated pieces", len(cuts))
    return _concatenate_pieces(raw, cuts)


def _concatenate_pieces(raw: mne.io.BaseRaw, cuts: np.ndarray) -> mne.io.BaseRaw:
    """Cut a recording (not loaded) at the samples ``cuts`` and concatenate the pieces again."""
    sfreq = raw.info["sfreq"]
    source = raw.copy()
    # the boundary annotations already at the cuts would be doubled by concatenate_raws
    samples = np.round(annotation_onsets(source) * sfreq).astype(np.int64)
    at_cut = np.isin(samples, cuts) & np.isin(source.annotations.description, BOUNDARY_DESCRIPTIONS)
    source.annotations.delete(np.flatnonzero(at_cut))
    bounds = np.concatenate([[0], cuts, [raw.n_times]])
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        piece = source.copy().crop(tmin=start / sfreq, tmax=(stop - 1) / sfreq)
        if piece.n_times != stop - start:  # pragma: no cover - MNE's crop rounds to samples
            raise RuntimeError(f"cropping samples {start}-{stop} gave {piece.n_times} samples")
        pieces.append(piece)
    return mne.concatenate_raws(pieces, preload=False, verbose="error")


def _kit_side_files(path: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Add marker (``mrk``), digitiser (``elp``) and head shape (``hsp``) files found beside."""
    if {"mrk", "elp", "hsp"} & set(kwargs):
        return kwargs
    folder = path.parent
    mrk = [
        p
        for p in folder.iterdir()
        if p != path and p.suffix.lower() in (".sqd", ".mrk") and "mrk" in p.name.lower()
    ]
    elp = [p for p in folder.iterdir() if p.suffix.lower() == ".elp"]
    hsp = [p for p in folder.iterdir() if p.suffix.lower() == ".hsp"]
    if len(mrk) == 1 and len(elp) == 1 and len(hsp) == 1:
        logger.debug("using KIT marker, digitiser and head-shape files found beside the recording")
        return {**kwargs, "mrk": mrk[0], "elp": elp[0], "hsp": hsp[0]}
    return kwargs


def _read_bti(path: Path, kwargs: dict[str, Any]) -> mne.io.BaseRaw:
    folder = path if path.is_dir() else path.parent
    pdf = path if path.is_file() else next(p for p in folder.iterdir() if _BTI_PDF.match(p.name))
    config = folder / "config"
    head_shape = folder / "hs_file"
    return mne.io.read_raw_bti(
        pdf,
        config_fname=config if config.exists() else "config",
        head_shape_fname=head_shape if head_shape.exists() else None,
        preload=False,
        verbose="error",
        **kwargs,
    )


def read_bids_recording(
    path: str | Path, *, reader_kwargs: Mapping[str, Any] | None = None
) -> mne.io.BaseRaw | list[mne.Evoked]:
    """Read one MEG recording of a BIDS folder through :func:`mne_bids.read_raw_bids`.

    Events in ``*_events.tsv`` become annotations; bad channels in ``*_channels.tsv`` are marked
    in ``info["bads"]``.

    Parameters
    ----------
    path : str | Path
        The recording inside the BIDS folder (``sub-*/[ses-*/]meg/sub-*_meg.<ext>``).
    reader_kwargs : Mapping | None
        Extra keyword arguments for the underlying MNE reader (``extra_params``).

    Returns
    -------
    recording : mne.io.BaseRaw | list of mne.Evoked
        The raw recording (split into its trials or concatenated pieces, as by
        :func:`read_recording`), or one evoked response for an averaged CTF dataset.
    """
    import mne_bids

    path = Path(path)
    if not path.exists():
        raise RecordingNotFoundError(path, "file or folder does not exist")
    root = next(p for p in path.parents if (p / "dataset_description.json").is_file())
    try:
        bids_path = mne_bids.get_bids_path_from_fname(path)
        bids_path.update(root=root)
        raw = mne_bids.read_raw_bids(
            bids_path, extra_params=dict(reader_kwargs or {}) or None, verbose="error"
        )
        if path.suffix.lower() == ".ds":
            return _ctf_recording(path, raw)
        return split_at_boundaries(raw)
    except UnreadableRecordingError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
        raise UnreadableRecordingError(
            path, f"cannot be read as BIDS MEG data ({type(err).__name__}: {err})"
        ) from err


__all__ = [
    "Recording",
    "detect_format",
    "split_at_boundaries",
    "split_trials",
    "read_bids_recording",
    "read_recording",
]
