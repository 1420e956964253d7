"""Shared fixtures: the real MEG recordings and quiet, offline library settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MNE_LOGGING_LEVEL", "WARNING")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _meg_data_dir() -> Path:
    override = os.environ.get("MEGFM_TEST_DATA")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "meg-data"


@pytest.fixture(scope="session")
def meg_data_dir() -> Path:
    """Folder of real MEG recordings (``../shared/meg-data`` or ``$MEGFM_TEST_DATA``).

    Tests that use it skip with a reason when it is absent, except under ``CI=true``, where a
    missing folder fails the run so that CI can never pass by skipping them.
    """
    path = _meg_data_dir()
    if not (path / "README.md").is_file():
        reason = (
            f"real MEG recordings not found at {path}; set MEGFM_TEST_DATA to the meg-data folder "
            "to run the tests on real recordings"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return path
