"""Privacy gate: what may leave the machine when a model or dataset is published.

Everything :func:`~megfm_hf.hub.push.push_model` uploads passes through here first, and the gate
refuses, with a :class:`PrivacyError` naming the file and what was found, when

- a folder holds a pickle-capable file (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.pickle``,
  ``*.ckpt``, ``*.joblib``) anywhere, or an uploaded file is a pickle or a ``torch.save`` archive
  whatever its name: loading such files runs code, and weights go as safetensors only;
- a weight file is not safetensors, or ``model.safetensors.index.json`` names a shard that is not
  a ``.safetensors`` file or lies outside the model folder (:func:`weight_files`);
- an uploaded file contains a string the caller forbids (names, subject codes, hospital IDs), in
  any case;
- an uploaded file contains, as a whole word, a subject code of the data the model was trained or
  evaluated on (:func:`subject_code_forms` says which spellings; the codes are collected by
  :func:`megfm_hf.hub.identifiers.subject_codes`);
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
from functools import lru_cache
from pathlib import Path, PurePosixPath, PureWindowsPath

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
# a whole word: neither preceded nor followed by a letter or digit
_WORD_START, _WORD_END = r"(?<![A-Za-z0-9])", r"(?![A-Za-z0-9])"
#: shortest bare subject code (with at least one letter) that is refused without its prefix
MIN_BARE_CODE_LENGTH = 3


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


def subject_code_forms(code: str) -> tuple[str, ...]:
    """The spellings of a subject code that are refused as whole words, longest first.

    Parameters
    ----------
    code : str
        A subject code as a dataset or ``split.json`` holds it (``"0412"``, ``"sub-pt0412"``).

    Returns
    -------
    forms : tuple of str
        ``sub-<code>`` always; the bare code too when it has at least
        :data:`MIN_BARE_CODE_LENGTH` characters and a letter. Empty for an empty code.

    Notes
    -----
    A code of digits alone (BIDS ``sub-01`` is ``"01"`` in the ``subject`` column) cannot be told
    apart from a number in a text (``p = 0.01``), so only its prefixed spelling is refused;
    :func:`megfm_hf.hub.identifiers.sanitize_metrics` removes the bare codes from the metrics.
    Codes are matched as whole words (not inside a longer word or number), so that a short code
    does not match by chance inside a hash or an identifier of the code.
    """
    code = str(code).strip()
    bare = code[4:] if code.lower().startswith("sub-") else code
    if not bare:
        return ()
    forms = [f"sub-{bare}"]
    if len(bare) >= MIN_BARE_CODE_LENGTH and any(c.isalpha() for c in bare):
        forms.append(bare)
    return tuple(forms)


@lru_cache(maxsize=16)
def subject_code_pattern(codes: tuple[str, ...]) -> re.Pattern[str] | None:
    """A case-insensitive pattern matching any spelling of ``codes`` as a whole word.

    Parameters
    ----------
    codes : tuple of str
        Subject codes (see :func:`subject_code_forms`).

    Returns
    -------
    pattern : re.Pattern | None
        ``None`` when no code has a spelling to refuse.
    """
    forms = sorted({form for code in codes for form in subject_code_forms(code)}, key=len)
    if not forms:
        return None
    alternatives = "|".join(re.escape(form) for form in reversed(forms))
    return re.compile(f"{_WORD_START}(?:{alternatives}){_WORD_END}", re.IGNORECASE)


def find_identifiers(
    text: str,
    forbidden_strings: Sequence[str] = (),
    *,
    patterns: bool = True,
    subject_codes: Sequence[str] = (),
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
    subject_codes : sequence of str
        Subject codes of the data that must not appear as whole words, in the spellings of
        :func:`subject_code_forms`, compared case-insensitively.

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
    code_pattern = subject_code_pattern(tuple(subject_codes))
    if code_pattern is not None:
        for match in code_pattern.finditer(text):
            found.append((match.start(), f"subject code of the data ({mask(match.group())})"))
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


def _scan_text(
    path: Path, text: str, forbidden: Sequence[str], codes: Sequence[str], where: str = ""
) -> list[Finding]:
    return [
        Finding(path, where or _line_of(text, offset), what)
        for offset, what in find_identifiers(text, forbidden, subject_codes=codes)
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


#: single-file weights and the index of sharded weights (``save_pretrained``'s names)
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def _shard_problem(shard: str) -> str | None:
    """Why a ``weight_map`` entry cannot be published, or ``None`` when it can."""
    if not shard.strip():
        return f"{shard!r} is not a file name"
    if "\\" in shard:
        return f"{shard!r} has a backslash; repository paths use '/'"
    if PurePosixPath(shard).is_absolute() or PureWindowsPath(shard).drive:
        return f"{shard!r} is an absolute path; shards must lie in the model folder"
    if any(part in ("..", ".", "") for part in shard.split("/")):
        return f"{shard!r} has a '.', '..' or empty component; shards must lie in the model folder"
    if not shard.lower().endswith(".safetensors"):
        return f"{shard!r} is not a .safetensors file; weights are published as safetensors only"
    return None


def weight_files(model_dir: str | Path) -> tuple[dict[str, Path], list[str]]:
    """The weights of a model folder, each safetensors header validated.

    Parameters
    ----------
    model_dir : str | Path
        A ``save_pretrained`` folder with ``model.safetensors``, or with
        ``model.safetensors.index.json`` and the shards its ``weight_map`` names.

    Returns
    -------
    files : dict of str to Path
        Path in the repository -> local file (the index included); empty without weights.
    missing : list of str
        Shards named in the index that are not in the folder.

    Raises
    ------
    PrivacyError
        If the index is not a JSON object with a ``weight_map`` of names, names a file that is
        not ``.safetensors`` or lies outside the folder (absolute path, ``.`` or ``..``
        component, link out of the folder), or a weight file is not a safetensors file. The
        message names the index and every offending entry.
    """
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS).is_file():
        safetensors_header(model_dir / WEIGHTS)
        return {WEIGHTS: model_dir / WEIGHTS}, []
    index_path = model_dir / WEIGHTS_INDEX
    if not index_path.is_file():
        return {}, []
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrivacyError(f"{index_path}: not valid JSON ({error})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise PrivacyError(f"{index_path}: expected a JSON object with a 'weight_map' object")
    if not all(isinstance(name, str) for name in weight_map.values()):
        raise PrivacyError(f"{index_path}: every weight_map value must be a file name (a string)")
    shards = sorted(set(weight_map.values()))
    problems = [problem for shard in shards if (problem := _shard_problem(shard))]
    if not problems:
        root = model_dir.resolve()
        problems = [
            f"{shard!r} links outside the model folder"
            for shard in shards
            if not (model_dir / shard).resolve().is_relative_to(root)
        ]
    if problems:
        raise PrivacyError(
            f"{index_path}: the weight_map cannot be published: " + "; ".join(problems)
        )
    files: dict[str, Path] = {WEIGHTS_INDEX: index_path}
    missing: list[str] = []
    for shard in shards:
        path = model_dir / shard
        if path.is_file():
            safetensors_header(path)
            files[shard] = path
        else:
            missing.append(shard)
    return files, missing


def _scan_safetensors(path: Path, forbidden: Sequence[str], codes: Sequence[str]) -> list[Finding]:
    # Only the header can hold text; the tensor bytes are numbers, and scanning them would match
    # short strings by chance.
    header = safetensors_header(path)
    return _scan_text(
        path, json.dumps(header, indent=0), forbidden, codes, where="safetensors header"
    )


def _scan_parquet(
    path: Path, forbidden: Sequence[str], codes: Sequence[str], *, check_columns: bool
) -> list[Finding]:
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
            path, text, forbidden, codes, where=f"metadata {key.decode(errors='replace')!r}"
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
            # the subject column holds the subject codes by design: only forbidden strings here
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
    subject_codes: Sequence[str] = (),
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
    subject_codes : sequence of str
        Subject codes refused as whole words (:func:`subject_code_forms`) everywhere except in
        the column values of a Parquet shard, whose ``subject`` column holds them by design.

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
        return _scan_safetensors(path, forbidden_strings, subject_codes)
    if is_pickle_file(path):
        return [Finding(path, "", "pickle data (loading it runs code); use safetensors or JSON")]
    if suffix == ".parquet":
        return _scan_parquet(
            path, forbidden_strings, subject_codes, check_columns=check_dataset_columns
        )
    data = path.read_bytes()
    if suffix in TEXT_SUFFIXES:
        text = data.decode("utf-8", errors="replace")
        return _scan_text(path, text, forbidden_strings, subject_codes)
    # Binary files (images, PDFs): identifiers live in their readable runs (PNG text chunks,
    # PDF info dictionaries), as the ``strings`` tool shows them.
    findings = []
    for run in _PRINTABLE_RUN.finditer(data):
        text = run.group().decode("ascii")
        findings += [
            Finding(path, f"byte {run.start() + offset}", what)
            for offset, what in find_identifiers(
                text, forbidden_strings, subject_codes=subject_codes
            )
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
    subject_codes: Iterable[str] = (),
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
    subject_codes : iterable of str
        Subject codes of the data, refused as whole words (see :func:`scan_file`).

    Raises
    ------
    PrivacyError
        Naming every file and what was found in it.
    """
    forbidden = check_forbidden_strings(forbidden_strings)
    codes = tuple(sorted(set(subject_codes)))
    findings: list[Finding] = []
    if isinstance(paths, Mapping):
        for name, path in paths.items():
            findings += [
                Finding(Path(path), "name in the repository", what)
                for _, what in find_identifiers(name, forbidden, subject_codes=codes)
            ]
        paths = paths.values()
    for path in paths:
        findings += scan_file(
            path, forbidden, check_dataset_columns=check_dataset_columns, subject_codes=codes
        )
    if findings:
        listed = "\n".join(f"  - {finding}" for finding in findings[:20])
        more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
        raise PrivacyError(
            f"refusing to publish: {len(findings)} finding(s) in the files to upload:\n"
            f"{listed}{more}\nRemove the identifiers (or the files) and try again."
        )


def check_text(
    text: str,
    *,
    source: str,
    forbidden_strings: Iterable[str] | None = None,
    subject_codes: Iterable[str] = (),
) -> None:
    """Raise :class:`PrivacyError` if a text (a rendered card) holds an identifier.

    Parameters
    ----------
    text : str
        The text.
    source : str
        What the text is, for the error message.
    forbidden_strings : iterable of str | None
        Identifier strings that must not appear.
    subject_codes : iterable of str
        Subject codes of the data, refused as whole words (:func:`subject_code_forms`).
    """
    forbidden = check_forbidden_strings(forbidden_strings)
    codes = tuple(sorted(set(subject_codes)))
    findings = [
        f"{_line_of(text, offset)}: {what}"
        for offset, what in find_identifiers(text, forbidden, subject_codes=codes)
    ]
    if findings:
        raise PrivacyError(f"{source} holds identifiers: " + "; ".join(findings[:20]))


__all__ = [
    "KNOWN_DATASET_COLUMNS",
    "MIN_BARE_CODE_LENGTH",
    "PICKLE_SUFFIXES",
    "WEIGHTS",
    "WEIGHTS_INDEX",
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
    "subject_code_forms",
    "subject_code_pattern",
    "weight_files",
]
