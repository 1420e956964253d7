"""``megfm push``: publish a saved model (and optionally its dataset) to the Hub."""

from __future__ import annotations

import argparse
import logging
import sys

from .privacy import PrivacyError
from .push import ModelFolderError, push_model, read_forbidden_strings

logger = logging.getLogger(__name__)


def add_forbidden_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--forbid`` and ``--forbidden-strings-file`` (identifiers the gate refuses)."""
    parser.add_argument(
        "--forbidden-strings-file",
        metavar="FILE",
        help="file of names, subject codes or hospital IDs (one per line) that must appear in no "
        "published file; preferred over --forbid, which leaves them in the shell history",
    )
    parser.add_argument(
        "--forbid",
        metavar="STRING",
        action="append",
        default=[],
        help="an identifier string that must appear in no published file (repeatable)",
    )


def forbidden_from_args(args: argparse.Namespace) -> list[str]:
    """Collect the identifier strings given on the command line."""
    strings = list(args.forbid or [])
    if args.forbidden_strings_file:
        strings += read_forbidden_strings(args.forbidden_strings_file)
    return strings


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``megfm push`` arguments to ``parser``."""
    parser.add_argument("--model", required=True, metavar="DIR", help="save_pretrained folder")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="model repository")
    parser.add_argument("--private", action="store_true", help="create the repositories as private")
    parser.add_argument("--dataset", metavar="DIR", help="built dataset folder to upload too")
    parser.add_argument("--dataset-repo-id", metavar="ORG/NAME", help="dataset repository")
    parser.add_argument("--token", help="Hub token (default: the logged-in token)")
    parser.add_argument(
        "--commit-message", default="Upload megfm model", help="message of the model commit"
    )
    parser.add_argument(
        "--eval-dataset-repo-id",
        metavar="ORG/NAME",
        help="Hub id of the data the metrics were computed on, for the card's model-index "
        "(default: none, unless the metrics name it)",
    )
    add_forbidden_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``megfm push``; return the exit status (0: pushed, 1: refused or failed, 2: bad
    arguments)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (args.dataset is None) != (args.dataset_repo_id is None):
        print("megfm push: --dataset and --dataset-repo-id go together", file=sys.stderr)
        return 2
    try:
        forbidden = forbidden_from_args(args)
    except (OSError, ValueError) as err:
        print(f"megfm push: {err}", file=sys.stderr)
        return 2
    try:
        url = push_model(
            args.model,
            args.repo_id,
            private=args.private,
            dataset_dir=args.dataset,
            dataset_repo_id=args.dataset_repo_id,
            token=args.token,
            commit_message=args.commit_message,
            forbidden_strings=forbidden,
            eval_dataset_repo_id=args.eval_dataset_repo_id,
        )
    except (PrivacyError, ModelFolderError, ValueError, OSError) as err:
        print(f"megfm push: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.model} to {args.repo_id}: {url}")
    return 0


__all__ = ["add_forbidden_arguments", "configure_parser", "forbidden_from_args", "run"]
