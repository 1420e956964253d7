"""Privacy gate: what may leave the machine when a model or dataset is published.

Everything :func:`~megfm_hf.hub.push.push_model` uploads passes through here first, and the gate
refuses, with a :class:`PrivacyError` naming the file and what was found, when

- a folder holds a pickle-capable file (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.pickle``,
  ``*.ckpt``, ``*.joblib``) anywhere, or an uploaded file is a pickle or a ``torch.save`` archive
  whatever its name: loading such files runs code, and weights go as safetensors only;
- an uploaded file contains a string the caller forbids (names, subject codes, hospital IDs), in
  any case;
- an uploaded file contains a typical identifier: a field of MNE's ``subject_info`` or another
  person field with a value (``his_id``, ``first_name``, ``last_name``, ``birthday``, ...), a
  ``meas_date`` with a value, an e-mail address, or a date of birth;
- a Parquet shard has a column outside the known window schema (:data:`KNOWN_DATASET_COLUMNS`).

Error messages name the file, the line or column and the kind of finding, and show only a masked
excerpt, so that the error itself does not copy the identifier into logs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

#: columns of the window shards written by :mod:`megfm_hf.data.builder`
KNOWN_DATASET_COLUMNS: frozenset[str] = frozenset(
    {
        "input_values",
        "sensor_positions",
        "sensor_types",
        "sensor_mask",
        "sfreq",
        "subject",
        "session",
        "state",
        "label",
        "onset_s",
        "event",
        "recording",
    }
)

#: suffixes of formats that can hold a pickle (unpickling runs arbitrary code)
PICKLE_SUFFIXES: frozenset[str] = frozenset(
    {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}
)

#: suffixes read as text; other files are scanned through their printable runs
TEXT_SUFFIXES: frozenset[str] = frozenset(
    {".md", ".json", ".py", ".txt", ".yaml", ".yml", ".csv", ".tsv", ".svg", ".html", ".cfg"}
)

# MNE ``subject_info`` fields and other person fields. Only a key *with a value* is an identifier:
# a card may say that birthdays were removed, and a config may hold ``"keep_meas_date": false``.
_PERSON_KEYS = (
    "subject_info",
    "his_id",
    "first_name",
    "middle_name",
    "last_name",
    "birthday",
    "birth_date",
    "birthdate",
    "date_of_birth",
    "dob",
    "patient_name",
    "patient_id",
    "experimenter",
    "meas_date",
)
_EMPTY_VALUE = r"(?:null|none|~|\{\s*\}|\[\s*\]|''|\"\"|false|nan)(?![A-Za-z0-9_])"
_KEY_WITH_VALUE = re.compile(
    r"(?<![A-Za-z0-9_])[\"']?(" + "|".join(_PERSON_KEYS) + r")[\"']?\s*[:=]\s*"
    # whitespace in the class stops ``\s*`` from backtracking past an empty value
    r"(?!" + _EMPTY_VALUE + r"|[\s,}\]]|$)",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_DATE = r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})"
_BIRTH_DATE = re.compile(
    r"(?<![A-Za-z])(?:date\s+of\s+birth|born(?:\s+on)?|d\.?o\.?b\.?|birthday)\W{0,3}\s*" + _DATE,
    re.IGNORECASE,
)
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{4,}")


class PrivacyError(ValueError):
    """A file that is about to be published would leak an identifier or run code when loaded."""


@dataclass(frozen=True)
class Finding:
    """One thing the gate refuses.

    Attributes
    ----------
    path : Path
        The file.
    where : str
        Line, column or part of the file (``"line 12"``, ``"column 'subject'"``).
    what : str
        Kind of finding with a masked excerpt.
    """

    path: Path
    where: str
    what: str

    def __str__(self) -> str:
        where = f" ({self.where})" if self.where else ""
        return f"{self.path}{where}: {self.what}"


def mask(text: str) -> str:
    """Return ``text`` with all but its first character replaced, to name it without leaking it."""
    text = text.strip()
    if len(text) <= 1:
        return "*"
    return f"{text[0]}{'*' * min(len(text) - 1, 8)} ({len(text)} characters)"


def check_forbidden_strings(forbidden_strings: Iterable[str] | None) -> tuple[str, ...]:
    """Validate caller-given identifier strings: non-empty strings, compared case-insensitively.

    Parameters
    ----------
    forbidden_strings : iterable of str | None
        Names, subject codes, hospital IDs that must not be published.

    Returns
    -------
    strings : tuple of str
        The stripped strings.
    """
    if forbidden_strings is None:
        return ()
    if isinstance(forbidden_strings, str | bytes):
        raise TypeError(
            "forbidden_strings must be a list of strings, got a single string; wrap it in a list"
        )
    cleaned = []
    for index, value in enumerate(forbidden_strings):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"forbidden_strings[{index}]={value!r}; expected a non-empty string (an empty "
                "string would match every file)"
            )
        cleaned.append(value.strip())
    return tuple(cleaned)


def find_identifiers(
    text: str, forbidden_strings: Sequence[str] = (), *, patterns: bool = True
) -> list[tuple[int, str]]:
    """Find identifiers in a text.

    Parameters
    ----------
    text : str
        The text to scan.
    forbidden_strings : sequence of str
        Strings that must not appear, compared case-insensitively.
    patterns : bool
        Also look for typical identifiers (person fields with values, ``meas_date`` values,
        e-mail addresses, dates of birth).

    Returns
    -------
    findings : list of (offset, description)
        Character offset of each finding and what it is, with the identifier masked.
    """
    found: list[tuple[int, str]] = []
    lowered = text.lower()
    for number, value in enumerate(forbidden_strings, start=1):
        offset = lowered.find(value.lower())
        if offset >= 0:
            found.append((offset, f"forbidden string #{number} ({mask(value)})"))
    if patterns:
        for match in _KEY_WITH_VALUE.finditer(text):
            key = match.group(1)
            value = (
                text[match.end() : match.end() + 40].splitlines()[0]
                if match.end() < len(text)
                else ""
            )
            found.append((match.start(), f"identifier field {key!r} with a value ({mask(value)})"))
        for match in _EMAIL.finditer(text):
            found.append((match.start(), f"e-mail address ({mask(match.group())})"))
        for match in _BIRTH_DATE.finditer(text):
            found.append((match.start(), f"date of birth ({mask(match.group())})"))
    return sorted(found)


def _line_of(text: str, offset: int) -> str:
    return f"line {text.count(chr(10), 0, offset) + 1}"


def _scan_text(path: Path, text: str, forbidden: Sequence[str], where: str = "") -> list[Finding]:
    return [
        Finding(path, where or _line_of(text, offset), what)
        for offset, what in find_identifiers(text, forbidden)
    ]


def is_pickle_file(path: Path) -> bool:
    """Whether a file is a pickle stream or a ``torch.save`` zip archive, whatever its name."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    # pickle protocols 2-5 start with the PROTO opcode followed by the protocol number
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith((".pkl", ".pickle")) for name in archive.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def find_pickle_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, symlinks not followed) with a pickle suffix."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in PICKLE_SUFFIXES:
                found.append(Path(root) / name)
    return found


def safetensors_header(path: Path) -> dict:
    """Read and validate the JSON header of a safetensors file (the tensors are not loaded).

    Raises
    ------
    PrivacyError
        If the file is not a safetensors file (for example a renamed pickle).
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise PrivacyError(f"{path}: {size} bytes is too short for a safetensors file")
        length = struct.unpack("<Q", raw)[0]
        if length <= 0 or length > min(size - 8, 100_000_000):
            raise PrivacyError(
                f"{path}: not a safetensors file (header length {length} for a file of {size} "
                "bytes); weights must be saved with safetensors"
            )
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PrivacyError(
                f"{path}: not a safetensors file (header is not JSON: {error})"
            ) from None
    if not isinstance(header, dict):
        raise PrivacyError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header


def _scan_safetensors(path: Path, forbidden: Sequence[str]) -> list[Finding]:
    # Only the header can hold text; the tensor bytes are numbers, and scanning them would match
    # short strings by chance.
    header = safetensors_header(path)
    return _scan_text(path, json.dumps(header, indent=0), forbidden, where="safetensors header")


def _scan_parquet(path: Path, forbidden: Sequence[str], *, check_columns: bool) -> list[Finding]:
    findings = []
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    if check_columns:
        unknown = [name for name in schema.names if name not in KNOWN_DATASET_COLUMNS]
        if unknown:
            findings.append(
                Finding(
                    path,
                    "schema",
                    f"unknown columns {unknown}; a shard may hold only "
                    f"{sorted(KNOWN_DATASET_COLUMNS)}",
                )
            )
    for key, value in (schema.metadata or {}).items():
        text = value.decode("utf-8", errors="replace")
        findings += _scan_text(
            path, text, forbidden, where=f"metadata {key.decode(errors='replace')!r}"
        )
    string_columns = [
        field.name
        for field in schema
        if str(field.type) in ("string", "large_string") and field.name in KNOWN_DATASET_COLUMNS
    ]
    if string_columns:
        table = parquet.read(columns=string_columns)
        for name in string_columns:
            values = pc.unique(table[name].combine_chunks()).to_pylist()
            text = "\n".join(v for v in values if v is not None)
            findings += [
                Finding(path, f"column {name!r}", what)
                for _, what in find_identifiers(text, forbidden)
            ]
    return findings


def scan_file(
    path: str | Path,
    forbidden_strings: Sequence[str] = (),
    *,
    check_dataset_columns: bool = True,
) -> list[Finding]:
    """Return what the gate refuses in one file that is about to be uploaded.

    Parameters
    ----------
    path : str | Path
        The file.
    forbidden_strings : sequence of str
        Validated with :func:`check_forbidden_strings`.
    check_dataset_columns : bool
        Refuse Parquet columns outside :data:`KNOWN_DATASET_COLUMNS`.

    Returns
    -------
    findings : list of Finding
        Empty when the file may be published.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return [Finding(path, "", f"pickle-capable file type {suffix!r} (loading it runs code)")]
    if suffix == ".safetensors":
        return _scan_safetensors(path, forbidden_strings)
    if is_pickle_file(path):
        return [Finding(path, "", "pickle data (loading it runs code); use safetensors or JSON")]
    if suffix == ".parquet":
        return _scan_parquet(path, forbidden_strings, check_columns=check_dataset_columns)
    data = path.read_bytes()
    if suffix in TEXT_SUFFIXES:
        return _scan_text(path, data.decode("utf-8", errors="replace"), forbidden_strings)
    # Binary files (images, PDFs): identifiers live in their readable runs (PNG text chunks,
    # PDF info dictionaries), as the ``strings`` tool shows them.
    findings = []
    for run in _PRINTABLE_RUN.finditer(data):
        text = run.group().decode("ascii")
        findings += [
            Finding(path, f"byte {run.start() + offset}", what)
            for offset, what in find_identifiers(text, forbidden_strings)
        ]
    return findings


def refuse_pickles(folder: Path, what: str) -> None:
    """Raise :class:`PrivacyError` if ``folder`` holds any pickle-capable file."""
    pickles = find_pickle_files(folder)
    if pickles:
        listed = ", ".join(str(p.relative_to(folder)) for p in pickles[:10])
        more = f" and {len(pickles) - 10} more" if len(pickles) > 10 else ""
        raise PrivacyError(
            f"{what} {folder} holds pickle-capable files ({listed}{more}); loading them runs "
            "code, so this folder is not published. Remove them: weights go as "
            "model.safetensors (save_pretrained), training arguments as training_args.json, and a "
            "training output folder with checkpoints is not an export folder."
        )


def check_files(
    paths: Mapping[str, str | Path] | Iterable[str | Path],
    forbidden_strings: Iterable[str] | None = None,
    *,
    check_dataset_columns: bool = True,
) -> None:
    """Scan every file and raise one :class:`PrivacyError` listing all findings.

    Parameters
    ----------
    paths : Mapping of str to path | iterable of str | Path
        Files about to be uploaded; a mapping from the path in the repository to the local file
        has its repository paths checked as well (a file name can hold a name too).
    forbidden_strings : iterable of str | None
        Identifier strings that must not be published.
    check_dataset_columns : bool
        Refuse Parquet columns outside :data:`KNOWN_DATASET_COLUMNS`.

    Raises
    ------
    PrivacyError
        Naming every file and what was found in it.
    """
    forbidden = check_forbidden_strings(forbidden_strings)
    findings: list[Finding] = []
    if isinstance(paths, Mapping):
        for name, path in paths.items():
            findings += [
                Finding(Path(path), "name in the repository", what)
                for _, what in find_identifiers(name, forbidden)
            ]
        paths = paths.values()
    for path in paths:
        findings += scan_file(path, forbidden, check_dataset_columns=check_dataset_columns)
    if findings:
        listed = "\n".join(f"  - {finding}" for finding in findings[:20])
        more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
        raise PrivacyError(
            f"refusing to publish: {len(findings)} finding(s) in the files to upload:\n"
            f"{listed}{more}\nRemove the identifiers (or the files) and try again."
        )


def check_text(text: str, *, source: str, forbidden_strings: Iterable[str] | None = None) -> None:
    """Raise :class:`PrivacyError` if a text (a rendered card) holds an identifier.

    Parameters
    ----------
    text : str
        The text.
    source : str
        What the text is, for the error message.
    forbidden_strings : iterable of str | None
        Identifier strings that must not appear.
    """
    forbidden = check_forbidden_strings(forbidden_strings)
    findings = [
        f"{_line_of(text, offset)}: {what}" for offset, what in find_identifiers(text, forbidden)
    ]
    if findings:
        raise PrivacyError(f"{source} holds identifiers: " + "; ".join(findings[:20]))


__all__ = [
    "KNOWN_DATASET_COLUMNS",
    "PICKLE_SUFFIXES",
    "Finding",
    "PrivacyError",
    "check_files",
    "check_forbidden_strings",
    "check_text",
    "find_identifiers",
    "find_pickle_files",
    "is_pickle_file",
    "refuse_pickles",
    "safetensors_header",
    "scan_file",
]
