"""MEG data pipeline: read any vendor, preprocess, window, anonymize, package as ``datasets``.

Main entry points:

- :class:`MEGProcessor`: recording (or path) -> model inputs; saved as ``preprocessor_config.json``.
- :func:`build_dataset`: many recordings (manifest or BIDS) -> a dataset folder with Arrow files
  for ``datasets.load_from_disk`` and Parquet shards for ``load_dataset("parquet", ...)``.
- :func:`read_recording`: any MEG format MNE reads.
"""

from .anonymize import anonymize, identifier_strings, recording_hash
from .builder import (
    BuildResult,
    MEGDatasetConfig,
    MEGWindowsBuilder,
    build_dataset,
    push_dataset_to_hub,
)
from .errors import (
    EventNotFoundError,
    InconsistentSegmentsError,
    ManifestError,
    MEGDataError,
    MissingLabelError,
    MixedLabelVocabularyError,
    NoMEGSensorsError,
    NonFiniteDataError,
    NoWindowsError,
    PrivacyError,
    RecordingNotFoundError,
    RecordingTooShortError,
    SamplingRateError,
    UnknownSensorTypeError,
    UnreadableRecordingError,
)
from .manifest import RecordingSpec, manifest_from_bids, read_manifest, write_manifest
from .preprocessing import DEFAULT_SCALINGS
from .processor import DEFAULT_REJECT, MEGProcessor, ProcessedRecording
from .readers import detect_format, read_bids_recording, read_recording
from .recipes import RECIPES, build_recipe, fetch_recipe
from .sensors import SensorArray, sensor_array, sensor_type_code
from .shards import window_features

__all__ = [
    "BuildResult",
    "DEFAULT_REJECT",
    "DEFAULT_SCALINGS",
    "EventNotFoundError",
    "InconsistentSegmentsError",
    "MEGDataError",
    "MEGDatasetConfig",
    "MEGProcessor",
    "MEGWindowsBuilder",
    "ManifestError",
    "MissingLabelError",
    "MixedLabelVocabularyError",
    "NoMEGSensorsError",
    "NoWindowsError",
    "NonFiniteDataError",
    "PrivacyError",
    "ProcessedRecording",
    "RECIPES",
    "RecordingNotFoundError",
    "RecordingSpec",
    "RecordingTooShortError",
    "SamplingRateError",
    "SensorArray",
    "UnknownSensorTypeError",
    "UnreadableRecordingError",
    "anonymize",
    "build_dataset",
    "build_recipe",
    "detect_format",
    "fetch_recipe",
    "identifier_strings",
    "manifest_from_bids",
    "push_dataset_to_hub",
    "read_bids_recording",
    "read_manifest",
    "read_recording",
    "recording_hash",
    "sensor_array",
    "sensor_type_code",
    "window_features",
    "write_manifest",
]
