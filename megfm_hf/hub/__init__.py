"""Publishing: model cards, the privacy gate and pushes to the Hugging Face Hub."""

from .card import (
    REFERENCE_CITATION,
    build_model_card,
    eval_results_from_metrics,
    load_metrics,
    summarize_dataset,
    write_model_card,
)
from .identifiers import sanitize_metrics, subject_codes
from .privacy import KNOWN_DATASET_COLUMNS, PrivacyError, check_files, find_identifiers
from .push import (
    ModelFolderError,
    dataset_upload_files,
    model_upload_files,
    push_model,
    read_forbidden_strings,
)

__all__ = [
    "KNOWN_DATASET_COLUMNS",
    "REFERENCE_CITATION",
    "ModelFolderError",
    "PrivacyError",
    "build_model_card",
    "check_files",
    "dataset_upload_files",
    "eval_results_from_metrics",
    "find_identifiers",
    "load_metrics",
    "model_upload_files",
    "push_model",
    "read_forbidden_strings",
    "sanitize_metrics",
    "subject_codes",
    "summarize_dataset",
    "write_model_card",
]
