"""Errors raised for bad MEG input.

Every error names the file it is about and the problem, so that a user building a dataset from
hundreds of recordings can tell which one failed and why. In a multi-file build the reason (the
``problem`` text, without the path) is also recorded in the build report, where file names are
deliberately left out because they often contain subject identifiers.
"""

from __future__ import annotations

from pathlib import Path


class MEGDataError(ValueError):
    """A recording cannot be turned into windows.

    Parameters
    ----------
    path : str | Path | None
        The file or folder the problem is about (``None`` for in-memory MNE objects).
    problem : str
        What is wrong, with the value found and the value expected.
    """

    #: short, stable name of the failure kind, written to build reports
    reason = "invalid-input"

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        where = "<in-memory recording>" if path is None else str(path)
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # rebuilt from (path, problem) so the error survives the trip back from worker processes
        return (type(self), (self.path, self.problem))


class RecordingNotFoundError(MEGDataError, FileNotFoundError):
    """The file or folder does not exist."""

    reason = "not-found"


class UnreadableRecordingError(MEGDataError):
    """The file exists but no MNE reader accepts it (unknown format, truncated or corrupted)."""

    reason = "unreadable"


class NoMEGSensorsError(MEGDataError):
    """The recording holds no MEG sensors (for example an EEG-only file)."""

    reason = "no-meg-sensors"


class UnknownSensorTypeError(MEGDataError):
    """A MEG channel has a coil type that cannot be mapped to a sensor type code."""

    reason = "unknown-sensor-type"


class SamplingRateError(MEGDataError):
    """The recording's sampling rate is too low for the requested band."""

    reason = "sampling-rate-too-low"


class RecordingTooShortError(MEGDataError):
    """The recording is shorter than one window."""

    reason = "too-short"


class NonFiniteDataError(MEGDataError):
    """The recording holds NaN or infinite samples on good MEG sensors."""

    reason = "non-finite-data"


class EventNotFoundError(MEGDataError):
    """None of the requested events occurs in the recording."""

    reason = "event-not-found"


class InconsistentSegmentsError(MEGDataError):
    """The conditions of an evoked file differ in channels or time axis."""

    reason = "inconsistent-segments"


class NoWindowsError(MEGDataError):
    """Every window was rejected (for example by peak-to-peak thresholds)."""

    reason = "no-windows"


class ManifestError(ValueError):
    """The manifest or the BIDS participants table is inconsistent.

    Parameters
    ----------
    source : str | Path
        The manifest file or BIDS root the problem is about.
    problem : str
        What is wrong.
    """

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")

    def __reduce__(self):
        return (type(self), (self.source, self.problem))


class MissingLabelError(ManifestError):
    """Some recordings carry a label and others (named by subject) do not."""


class MixedLabelVocabularyError(ManifestError):
    """Labels mix vocabularies (numbers and words, or spellings differing only in case)."""


class PrivacyError(RuntimeError):
    """An identifier read from a recording was about to reach the output."""


__all__ = [
    "EventNotFoundError",
    "InconsistentSegmentsError",
    "MEGDataError",
    "ManifestError",
    "MissingLabelError",
    "MixedLabelVocabularyError",
    "NoMEGSensorsError",
    "NoWindowsError",
    "NonFiniteDataError",
    "PrivacyError",
    "RecordingNotFoundError",
    "RecordingTooShortError",
    "SamplingRateError",
    "UnknownSensorTypeError",
    "UnreadableRecordingError",
]
