"""``megfm evaluate``: reproduce the three claims on a dataset, with a report and figures.

Example::

    megfm evaluate --model my-model --dataset my-dataset --output eval \\
        --ground-truth cohort/derivatives/ground_truth.json --max-windows 40
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..modeling.configuration_megfm import POOLING_MODES
from .evaluate import evaluate_model


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` arguments to ``parser``."""
    parser.add_argument("--model", required=True, help="saved model folder (save_pretrained)")
    parser.add_argument("--dataset", required=True, help="dataset folder (megfm build-dataset)")
    parser.add_argument("--output", required=True, help="folder for report.md, figures, metrics")
    parser.add_argument(
        "--subjects",
        default=None,
        help="held-out subjects, comma-separated (default: split.json 'test' of the model)",
    )
    parser.add_argument(
        "--ground-truth",
        default=None,
        help="ground_truth.json of a simulated cohort (expected attention regions)",
    )
    parser.add_argument(
        "--region",
        default=None,
        help="expected sensors for every condition: indices or channel names, comma-separated; "
        "or 'strongest[:K]': the K sensors per type (default 10) of each condition's strongest "
        "evoked field",
    )
    parser.add_argument(
        "--max-windows", type=int, default=40,
        help="at most this many windows per subject and condition (default 40; 0: all)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of masks, folds and resampling")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument(
        "--mask-folds", type=int, default=4,
        help="sensor groups hidden in turn (default 4: a quarter of the sensors per pass)",
    )  # fmt: skip
    parser.add_argument("--cv-folds", type=int, default=4, help="subject-level CV folds")
    parser.add_argument(
        "--permutations", type=int, default=2000, help="permutations of the null tests"
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument(
        "--pooling", choices=POOLING_MODES, default=None,
        help="how the classified features summarise a window (default: the model's own); "
        "'latents' pools the final latents of a latent-mode model",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``evaluate``; return 0 on success, 1 on bad input."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    subjects = None
    if args.subjects:
        subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    try:
        metrics = evaluate_model(
            args.model,
            args.dataset,
            args.output,
            subjects=subjects,
            ground_truth=args.ground_truth,
            region=args.region,
            max_windows=args.max_windows or None,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            mask_folds=args.mask_folds,
            cv_folds=args.cv_folds,
            n_permutations=args.permutations,
            n_bootstrap=args.bootstrap,
            progress=not args.no_progress,
            pooling=args.pooling,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"megfm evaluate: {err}", file=sys.stderr)
        return 1
    print(f"report written to {args.output}/report.md ({metrics['runtime_s']:.0f} s)")
    for section, reason in metrics.get("skipped", {}).items():
        print(f"  skipped {section}: {reason}")
    return 0


__all__ = ["configure_parser", "run"]
