"""``megfm card``: write the model card (``README.md``) of a saved model."""

from __future__ import annotations

import argparse
import logging
import sys

from .card import write_model_card
from .cli import add_forbidden_arguments, forbidden_from_args


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``megfm card`` arguments to ``parser``."""
    parser.add_argument("--model", required=True, metavar="DIR", help="save_pretrained folder")
    parser.add_argument(
        "--metrics",
        metavar="FILE",
        help="evaluation metrics.json (default: DIR/metrics.json when present)",
    )
    parser.add_argument(
        "--dataset",
        metavar="DIR|FILE",
        help="built dataset folder to summarize, or a dataset-summary JSON file (default: "
        "DIR/dataset_summary.json when present)",
    )
    parser.add_argument("--repo-id", metavar="ORG/NAME", help="Hub id the card is for")
    parser.add_argument("--dataset-repo-id", metavar="ORG/NAME", help="Hub id of the dataset")
    parser.add_argument("--output", metavar="FILE", help="where to write (default: DIR/README.md)")
    parser.add_argument(
        "--eval-dataset-repo-id",
        metavar="ORG/NAME",
        help="Hub id of the data the metrics were computed on, for the card's model-index "
        "(default: none, unless the metrics name it)",
    )
    add_forbidden_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``megfm card``; return the exit status (0: written, 1: failed, 2: bad arguments)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        forbidden = forbidden_from_args(args)
    except (OSError, ValueError) as err:
        print(f"megfm card: {err}", file=sys.stderr)
        return 2
    try:
        path = write_model_card(
            args.model,
            args.metrics,
            args.dataset,
            args.repo_id,
            dataset_repo_id=args.dataset_repo_id,
            output=args.output,
            forbidden_strings=forbidden,
            eval_dataset_repo_id=args.eval_dataset_repo_id,
        )
    except (ValueError, OSError) as err:
        print(f"megfm card: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


__all__ = ["configure_parser", "run"]
