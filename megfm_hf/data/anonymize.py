"""Remove identifiers from recordings on ingest, and check that none reaches the output.

Rows of the dataset hold only numbers, the subject/session/state/label strings the user gave, and a
keyed hash of the recording, so the measurement info never travels. Anonymizing anyway (MNE's
:meth:`mne.io.Raw.anonymize`) protects every later step that might touch ``info`` (logs, errors,
saved objects), and :func:`identifier_strings` lists what must never appear, so the builder can
check its own output against the source.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Iterable

import mne

from .errors import PrivacyError

logger = logging.getLogger(__name__)

_SUBJECT_TEXT_FIELDS = ("first_name", "middle_name", "last_name", "his_id")
_DEVICE_TEXT_FIELDS = ("serial", "site", "type", "model")
_MIN_IDENTIFIER_LENGTH = 3  # shorter strings (initials, "M") match random bytes too easily
#: spellings of a date that file names, BIDS entities (``ses-20021203``) and free text use
DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y")


def date_strings(date: dt.date) -> list[str]:
    """Spell a date every way :data:`DATE_FORMATS` lists.

    Parameters
    ----------
    date : datetime.date
        A birthday or measurement date.

    Returns
    -------
    spellings : list of str
        ``YYYY-MM-DD``, ``YYYYMMDD``, ``DD.MM.YYYY``, ``DD/MM/YYYY`` and ``MM/DD/YYYY``.
    """
    return [date.strftime(fmt) for fmt in DATE_FORMATS]


def identifier_strings(info: mne.Info, *, include_meas_date: bool = True) -> list[str]:
    """List the identifying strings of a measurement info.

    Parameters
    ----------
    info : mne.Info
        Info read from the original file (before anonymization).
    include_meas_date : bool
        Also list the measurement date.

    Returns
    -------
    identifiers : list of str
        Names, hospital ID (``his_id``), birthday, experimenter, device serial and site, project
        name; each at least three characters long, without duplicates. Dates are listed in every
        spelling of :func:`date_strings`.
    """
    found: list[str] = []
    subject_info = info.get("subject_info") or {}
    for key in _SUBJECT_TEXT_FIELDS:
        value = subject_info.get(key)
        if value:
            found.append(str(value))
    birthday = subject_info.get("birthday")
    if isinstance(birthday, dt.date):
        found.extend(date_strings(birthday))
    for key in ("experimenter", "proj_name"):
        if info.get(key):
            found.append(str(info[key]))
    device_info = info.get("device_info") or {}
    for key in _DEVICE_TEXT_FIELDS:
        if device_info.get(key):
            found.append(str(device_info[key]))
    if include_meas_date and info.get("meas_date") is not None:
        found.extend(date_strings(info["meas_date"].date()))
    # "mne_anonymize" and friends are what anonymized files already hold, not identifiers
    found = [s.strip() for s in found if "anonymi" not in s.lower()]
    return sorted({s for s in found if len(s) >= _MIN_IDENTIFIER_LENGTH})


def anonymize(
    inst: mne.io.BaseRaw | mne.BaseEpochs | mne.Evoked, *, keep_meas_date: bool = False
) -> mne.io.BaseRaw | mne.BaseEpochs | mne.Evoked:
    """Anonymize a recording in place with MNE and drop free-text fields MNE keeps.

    Parameters
    ----------
    inst : Raw | Epochs | Evoked
        The recording; modified in place.
    keep_meas_date : bool
        Keep the measurement date (``False``: MNE moves it, and the birthday with it, to
        2000-01-01, keeping time of day and age at measurement; ``True``: the birthday is
        removed instead, since unshifted it would identify the subject).

    Returns
    -------
    inst : Raw | Epochs | Evoked
        The same object.
    """
    originals = identifier_strings(inst.info, include_meas_date=not keep_meas_date)
    with inst.info._unlock():
        # file and measurement ids hold acquisition-machine ids and times; MNE shifts them with
        # the date and fails when that overflows (e.g. files dated 1970), so they go first
        inst.info["file_id"] = None
        inst.info["meas_id"] = None
    inst.anonymize(daysback=0 if keep_meas_date else None, verbose="error")
    with inst.info._unlock():
        # the description often names the site or the device serial (e.g. Ricoh systems)
        inst.info["description"] = None
        inst.info["device_info"] = None
        inst.info["helium_info"] = None
        # acquisition set-up text can name the site; the windows do not need it
        inst.info["acq_pars"] = None
        inst.info["acq_stim"] = None
        subject_info = inst.info.get("subject_info")
        if keep_meas_date and subject_info and subject_info.get("birthday") is not None:
            # without a date shift the birthday would survive unchanged
            subject_info.pop("birthday")
    check_no_identifiers(_info_text(inst.info), originals, where="anonymized measurement info")
    return inst


def _info_text(info: mne.Info) -> str:
    parts = [repr(info.get(key)) for key in info if key not in ("chs", "comps", "projs", "dig")]
    return "\n".join(parts)


def check_no_identifiers(text: str, identifiers: Iterable[str], *, where: str) -> None:
    """Raise if any identifier occurs in ``text`` (case-insensitive).

    Parameters
    ----------
    text : str
        Text about to be written.
    identifiers : iterable of str
        Strings from :func:`identifier_strings`.
    where : str
        What ``text`` is, for the error message. The identifier itself is never repeated.

    Raises
    ------
    PrivacyError
    """
    lowered = text.lower()
    for identifier in identifiers:
        if identifier.lower() in lowered:
            raise PrivacyError(
                f"an identifier read from the recording ({len(identifier)} characters) would be "
                f"written to the {where}; refusing to write it"
            )


def recording_hash(key: str, secret: bytes, *, length: int = 16) -> str:
    """Keyed hash (HMAC-SHA256) naming a recording without revealing its file name.

    Parameters
    ----------
    key : str
        What identifies the recording (its resolved path).
    secret : bytes
        Per-dataset secret; without it the hash cannot be reversed by trying file names.
    length : int
        Hex digits kept (16 hex digits = 64 bits).

    Returns
    -------
    digest : str
    """
    if not secret:
        raise ValueError("recording_hash: secret must be a non-empty byte string")
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()[:length]


__all__ = [
    "DATE_FORMATS",
    "anonymize",
    "check_no_identifiers",
    "date_strings",
    "identifier_strings",
    "recording_hash",
]
