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
from .windowing import BOUNDARY_ANNOTATIONS

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
        averaged CTF datasets. Gaps between the trials of a CTF dataset are annotated
        (:func:`mark_trial_boundaries`).

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
        return _read(path, fmt, kwargs)
    except (RecordingNotFoundError, UnreadableRecordingError):
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
        raise UnreadableRecordingError(
            path, f"cannot be read as {fmt} MEG data ({type(err).__name__}: {err})"
        ) from err


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
    """A CTF recording with its trials marked, or an averaged dataset as one evoked response.

    An averaged dataset stores the average as its first trial (later trials hold derived
    traces, such as the plus-minus average); it is returned with its time axis from the
    trigger, so that it is windowed like an evoked FIF file.
    """
    header = read_ctf_header(path)
    if header.n_averaged <= 0:
        return mark_trial_boundaries(raw, header.trial_samples)
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


CTF_CLOCK_CHANNEL = "SCLK01-177"
"""The CTF system clock channel: it counts acquisition time, sample by sample."""


def mark_trial_boundaries(raw: mne.io.BaseRaw, trial_samples: int) -> mne.io.BaseRaw:
    """Annotate the gaps between the trials of a CTF recording.

    CTF acquisition writes data in trials: a continuous recording in blocks that follow one
    another without a gap, an epoched one only around triggers, with the time between trials
    left out. MNE reads both as one continuous recording. The system clock channel
    (:data:`CTF_CLOCK_CHANNEL`) tells them apart: where it jumps between the last sample of one
    trial and the first of the next, time is missing. Each such boundary gets the
    ``"BAD boundary"`` and ``"EDGE boundary"`` annotations that :func:`mne.concatenate_raws`
    puts between concatenated recordings, so that filtering and resampling treat the trials
    separately and no window crosses from one trial into the next. Without a clock channel the
    trials are taken as continuous, as MNE reads them, with a warning.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording; its annotations are extended in place.
    trial_samples : int
        Samples per trial; nothing is marked when the recording is a single trial.

    Returns
    -------
    raw : mne.io.BaseRaw
        The same object.
    """
    if not 1 < trial_samples < raw.n_times:
        return raw
    edges = np.arange(trial_samples, raw.n_times, trial_samples)
    if CTF_CLOCK_CHANNEL not in raw.ch_names:
        logger.warning(
            "%s: %d trials of %d samples and no system clock channel %s to tell whether time is "
            "missing between them; they are read as one continuous recording",
            raw.filenames[0] if raw.filenames else "<in-memory recording>",
            len(edges) + 1,
            trial_samples,
            CTF_CLOCK_CHANNEL,
        )
        return raw
    gaps = edges[[_clock_jumps(raw, edge) for edge in edges]]
    if not len(gaps):
        logger.info(
            "%d trials of %d samples follow one another without gaps", len(edges) + 1, trial_samples
        )
        return raw
    # as in mne.concatenate_raws: annotation onsets count from first_samp = 0
    onsets = (gaps + raw.first_samp) / raw.info["sfreq"]
    raw.annotations.append(np.repeat(onsets, 2), 0.0, list(BOUNDARY_ANNOTATIONS) * len(gaps))
    logger.info("marked %d gaps between trials of %d samples", len(gaps), trial_samples)
    return raw


def _clock_jumps(raw: mne.io.BaseRaw, edge: int) -> bool:
    """Whether the system clock steps from sample ``edge - 1`` to ``edge`` unlike within a trial."""
    clock = raw.get_data(picks=[CTF_CLOCK_CHANNEL], start=edge - 2, stop=edge + 1)[0]
    within, across = np.diff(clock)
    return bool(abs(across - within) > 0.5 * abs(within))


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
        The raw recording (with the trials of a CTF dataset marked, as by
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
        return raw
    except UnreadableRecordingError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
        raise UnreadableRecordingError(
            path, f"cannot be read as BIDS MEG data ({type(err).__name__}: {err})"
        ) from err


__all__ = [
    "Recording",
    "detect_format",
    "CTF_CLOCK_CHANNEL",
    "mark_trial_boundaries",
    "read_bids_recording",
    "read_recording",
]
