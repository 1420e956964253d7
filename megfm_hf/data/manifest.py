"""Lists of recordings to build a dataset from: a manifest table or a BIDS folder.

A manifest is a TSV or CSV file with the columns ``path`` and ``subject`` and, optionally,
``session``, ``state`` (rest, auditory, somatosensory, ...) and ``label`` (control, patient, ...).
Relative paths are relative to the manifest's folder. Empty cells and ``n/a`` mean "not given".
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ManifestError, MissingLabelError, MixedLabelVocabularyError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "subject")
OPTIONAL_COLUMNS = ("session", "state", "label")
_MISSING = {"", "n/a", "na", "nan", "none"}


@dataclass(frozen=True)
class RecordingSpec:
    """One recording to build windows from.

    Attributes
    ----------
    path : str
        File or folder (CTF ``.ds``); absolute.
    subject : str
        Subject identifier as the user gives it (pseudonymous: it is written to every row).
    session, state, label : str
        ``""`` when not given.
    row : int
        Position in the manifest (0-based), used in build reports instead of the file name.
    """

    path: str
    subject: str
    session: str = ""
    state: str = ""
    label: str = ""
    row: int = 0

    def to_dict(self) -> dict[str, str | int]:
        """Plain dict (for worker processes and JSON)."""
        return asdict(self)


def _clean(value: str | None) -> str:
    value = "" if value is None else str(value).strip()
    return "" if value.lower() in _MISSING else value


def read_manifest(path: str | Path) -> list[RecordingSpec]:
    """Read a TSV/CSV manifest and validate its labels.

    Parameters
    ----------
    path : str | Path
        The manifest; ``.csv`` is comma-separated, anything else tab-separated.

    Returns
    -------
    recordings : list of RecordingSpec

    Raises
    ------
    ManifestError
        Missing file or columns, empty manifest, empty path or subject.
    MissingLabelError, MixedLabelVocabularyError
        See :func:`check_labels`.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, "manifest file does not exist")
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(
                path,
                f"missing column(s) {missing}; found {columns}, expected {list(REQUIRED_COLUMNS)} "
                f"and optionally {list(OPTIONAL_COLUMNS)} ({'comma' if delimiter == ',' else 'tab'}"
                "-separated)",
            )
        rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise ManifestError(path, "manifest lists no recordings")
    recordings = []
    for i, row in enumerate(rows):
        file_path, subject = _clean(row.get("path")), _clean(row.get("subject"))
        if not file_path or not subject:
            raise ManifestError(path, f"row {i + 1}: 'path' and 'subject' must not be empty")
        resolved = Path(file_path)
        if not resolved.is_absolute():
            resolved = path.parent / resolved
        recordings.append(
            RecordingSpec(
                path=str(resolved.resolve()),
                subject=subject,
                session=_clean(row.get("session")),
                state=_clean(row.get("state")),
                label=_clean(row.get("label")),
                row=i,
            )
        )
    check_labels(recordings, source=path)
    return recordings


def check_labels(recordings: Sequence[RecordingSpec], *, source: str | Path) -> list[str]:
    """Check that labels are given for all subjects or none, and share one vocabulary.

    Parameters
    ----------
    recordings : sequence of RecordingSpec
    source : str | Path
        Manifest or BIDS root, named in errors.

    Returns
    -------
    label_names : list of str
        Sorted distinct labels (empty when no recording is labelled).

    Raises
    ------
    MissingLabelError
        Some recordings are labelled and others are not (the unlabelled subjects are named).
    MixedLabelVocabularyError
        Labels mix numbers and words, differ only in case or spacing, or one subject carries
        two labels.
    """
    labelled = [r for r in recordings if r.label]
    if not labelled:
        return []
    unlabelled = sorted({r.subject for r in recordings if not r.label})
    if unlabelled:
        raise MissingLabelError(
            source,
            f"label missing for subject(s) {unlabelled} while {len(labelled)} recordings are "
            "labelled; give every subject a label or none",
        )
    names = sorted({r.label for r in labelled})
    numeric = [n for n in names if _is_number(n)]
    if numeric and len(numeric) != len(names):
        raise MixedLabelVocabularyError(
            source,
            f"labels mix numbers {numeric} and words {[n for n in names if not _is_number(n)]}; "
            "use one vocabulary (e.g. control/patient)",
        )
    folded: dict[str, str] = {}
    for name in names:
        key = " ".join(name.casefold().split())
        if key in folded:
            raise MixedLabelVocabularyError(
                source,
                f"labels {folded[key]!r} and {name!r} differ only in case or spacing; use one "
                "spelling",
            )
        folded[key] = name
    per_subject: dict[str, set[str]] = {}
    for r in labelled:
        per_subject.setdefault(r.subject, set()).add(r.label)
    conflicting = {s: sorted(v) for s, v in per_subject.items() if len(v) > 1}
    if conflicting:
        raise MixedLabelVocabularyError(
            source, f"subjects carry more than one label: {conflicting}; expected one per subject"
        )
    return names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def manifest_from_bids(
    bids_root: str | Path,
    *,
    label_column: str | None = "group",
    tasks: Iterable[str] | None = None,
    subjects: Iterable[str] | None = None,
) -> list[RecordingSpec]:
    """List the MEG recordings of a BIDS folder.

    Subject, session and task (used as ``state``) come from the BIDS entities; labels from the
    ``label_column`` of ``participants.tsv``.

    Parameters
    ----------
    bids_root : str | Path
        The BIDS folder (with ``dataset_description.json``).
    label_column : str | None
        Column of ``participants.tsv`` holding the label (``None``: no labels). When it is the
        default ``"group"`` and absent, recordings are unlabelled; any other absent column is
        an error.
    tasks, subjects : iterable of str | None
        Keep only these tasks / subjects (without the ``sub-`` prefix).

    Returns
    -------
    recordings : list of RecordingSpec
    """
    import mne_bids

    root = Path(bids_root)
    if not (root / "dataset_description.json").is_file():
        raise ManifestError(root, "not a BIDS folder (dataset_description.json is missing)")
    paths = mne_bids.find_matching_paths(
        root,
        datatypes="meg",
        suffixes="meg",
        tasks=list(tasks) if tasks else None,
        subjects=list(subjects) if subjects else None,
        extensions=[".fif", ".ds", ".con", ".sqd", ".pdf", ""],
    )
    seen: set[str] = set()
    found = []
    for bids_path in sorted(paths, key=lambda p: str(p.fpath)):
        fpath = Path(bids_path.fpath)
        # split FIF files are read from their first part; MNE follows the links
        if bids_path.split not in (None, "01") or str(fpath) in seen or not fpath.exists():
            continue
        seen.add(str(fpath))
        found.append(bids_path)
    if not found:
        raise ManifestError(root, "no MEG recordings found (sub-*/[ses-*/]meg/*_meg.*)")
    labels = _participant_labels(root, label_column)
    recordings = []
    for i, bids_path in enumerate(found):
        label = ""
        if labels is not None:
            label = labels.get(bids_path.subject, "")
        recordings.append(
            RecordingSpec(
                path=str(Path(bids_path.fpath).resolve()),
                subject=bids_path.subject,
                session=bids_path.session or "",
                state=bids_path.task or "",
                label=label,
                row=i,
            )
        )
    if labels is not None:
        unlabelled = sorted({r.subject for r in recordings if not r.label})
        if unlabelled:
            raise MissingLabelError(
                root / "participants.tsv",
                f"column {label_column!r} has no value for subject(s) {unlabelled}",
            )
    check_labels(recordings, source=root / "participants.tsv")
    return recordings


def _participant_labels(root: Path, label_column: str | None) -> dict[str, str] | None:
    if label_column is None:
        return None
    table = root / "participants.tsv"
    if not table.is_file():
        if label_column == "group":
            return None
        raise ManifestError(root, f"participants.tsv is missing; cannot read {label_column!r}")
    with table.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = reader.fieldnames or []
        if label_column not in columns:
            if label_column == "group":
                return None
            raise ManifestError(
                table, f"label column {label_column!r} not found; columns are {columns}"
            )
        labels = {}
        for row in reader:
            subject = _clean(row.get("participant_id")).removeprefix("sub-")
            labels[subject] = _clean(row.get(label_column))
    return labels


def write_manifest(recordings: Sequence[RecordingSpec], path: str | Path) -> Path:
    """Write recordings as a TSV manifest (columns path, subject, session, state, label)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
        for r in recordings:
            writer.writerow([r.path, r.subject, r.session, r.state, r.label])
    return path


__all__ = [
    "RecordingSpec",
    "check_labels",
    "manifest_from_bids",
    "read_manifest",
    "write_manifest",
]
