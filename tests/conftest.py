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

from megfm_hf.demo import DEMO_MODEL  # noqa: E402  (after the environment is set)

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


# ---------------------------------------------------------------------------------------------
# A small simulated cohort, its dataset and a briefly pretrained model, shared by the training
# and evaluation tests (built once per run: simulation, dataset and pretraining take minutes).
# ---------------------------------------------------------------------------------------------

COHORT_SUBJECTS = 8
# Seconds per run. With 20 s (about 10 stimuli per side and subject) the induced attention of
# one somatosensory condition missed the shuffled null (p = 0.10) on the two held-out subjects;
# 40 s give about 20 windows per subject and condition, and every condition p <= 0.001.
COHORT_SECONDS = 40.0
# Evoked reconstruction beats spatial interpolation only after about 1000 steps on this cohort
# (measured: at 700 steps auditory magnetometers reach NMSE 0.43 against 0.37 for
# interpolation; at 1000 steps 0.27-0.30 against 0.35-0.37). About 5 minutes on 2 cores.
PRETRAIN_STEPS = 1200
#: The demo's model: the tests train and evaluate exactly what `megfm demo` ships.
SMALL_MODEL = DEMO_MODEL


@pytest.fixture(scope="session")
def simulated_cohort(tmp_path_factory) -> dict[str, Path]:
    """An 8-subject cohort (40 s per run) on a 120-sensor helmet and its dataset (100 Hz, 1 s windows)."""
    from megfm_hf.data import MEGProcessor, build_dataset
    from megfm_hf.simulation import EVENT_ID, simulate_cohort, write_builtin_helmet

    root = tmp_path_factory.mktemp("cohort")
    helmet = write_builtin_helmet(root / "helmet_raw.fif", sfreq=150.0, n_positions=40)
    bids = root / "bids"
    result = simulate_cohort(
        bids, n_subjects=COHORT_SUBJECTS, duration=COHORT_SECONDS, sfreq=150.0, seed=0,
        geometry=helmet,
        progress=False,
    )  # fmt: skip
    processor = MEGProcessor(
        sfreq=100.0, patch_length=10, window_seconds=1.0, tmin=-0.2, l_freq=1.0, h_freq=40.0,
        event_id=dict(EVENT_ID),
    )  # fmt: skip
    dataset = root / "dataset"
    build_dataset(
        None, dataset, processor=processor, bids_root=bids, event_id=dict(EVENT_ID), secret="t"
    )
    return {"root": root, "bids": bids, "dataset": dataset, "truth": result.ground_truth_path}


@pytest.fixture(scope="session")
def pretrained_model(simulated_cohort) -> Path:
    """A small model pretrained with ``megfm_hf.training.pretrain`` on 6 of the 8 subjects."""
    from megfm_hf.training import pretrain

    return pretrain(
        simulated_cohort["dataset"],
        simulated_cohort["root"] / "pretraining",
        config=SMALL_MODEL,
        max_steps=PRETRAIN_STEPS,
        batch_size=16,
        learning_rate=1e-3,
        test_fraction=0.25,
        seed=0,
        disable_tqdm=True,
        save_strategy="no",
    )
