"""``megfm simulate``: write the simulated multi-state MEG cohort as a BIDS dataset."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .cohort import GROUND_TRUTH_RELPATH, CohortConfig, simulate_cohort

logger = logging.getLogger(__name__)

_DEFAULTS = CohortConfig()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.add_argument("--output", "-o", type=Path, required=True, help="BIDS root to write")
    parser.add_argument(
        "--subjects", type=int, default=_DEFAULTS.n_subjects,
        help=f"number of subjects, split between control and migraine (default {_DEFAULTS.n_subjects})",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="random seed (default 0)")
    parser.add_argument(
        "--effect-size", type=float, default=_DEFAULTS.effect_size,
        help="scale of the planted patient/control difference, 0 (null cohort) to 3 (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--geometry", type=Path, default=None,
        help="recording to take the sensor array from (FIF raw/evoked, CTF .ds, KIT .sqd/.con); "
        "default: built-in 306-sensor helmet",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=float, default=_DEFAULTS.duration,
        help=f"length of each run in seconds (default {_DEFAULTS.duration:g})",
    )  # fmt: skip
    parser.add_argument(
        "--sfreq", type=float, default=_DEFAULTS.sfreq,
        help=f"sampling rate in Hz (default {_DEFAULTS.sfreq:g})",
    )  # fmt: skip
    parser.add_argument(
        "--isi", type=float, default=_DEFAULTS.isi,
        help=f"mean stimulus onset interval in seconds (default {_DEFAULTS.isi:g})",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a cohort simulated in --output before (a folder holding anything else is "
        "never deleted)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the cohort described by ``args``; return the exit status (0 written, 1 failed).

    Bad options, a missing or unreadable ``--geometry`` and an output folder that may not be
    replaced are reported as ``megfm simulate: error: <message>`` on stderr, without traceback.
    """
    start = time.perf_counter()
    try:
        config = CohortConfig(
            n_subjects=args.subjects,
            seed=args.seed,
            effect_size=args.effect_size,
            duration=args.duration,
            sfreq=args.sfreq,
            geometry=args.geometry,
            isi=args.isi,
        )
        result = simulate_cohort(
            args.output, config, overwrite=args.overwrite, progress=not args.no_progress
        )
    # the package's data errors (an unreadable --geometry) are ValueErrors
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
        print(f"megfm simulate: error: {err}", file=sys.stderr)
        return 1
    groups = [subject.group for subject in result.subjects]
    print(
        f"Wrote {len(result.subjects)} subjects ({groups.count('control')} control, "
        f"{groups.count('migraine')} migraine), {len(result.files)} recordings, to "
        f"{result.root} in {time.perf_counter() - start:.1f} s; ground truth: "
        f"{result.root / GROUND_TRUTH_RELPATH}"
    )
    return 0
