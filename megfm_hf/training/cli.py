"""``megfm pretrain`` and ``megfm finetune``: the training scripts behind the main command.

Their options are dataclass fields parsed by ``HfArgumentParser`` (the run's own arguments
and the transformers ``TrainingArguments``), so this module only forwards the command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: These subcommands parse their own command line and print their own (HfArgumentParser) help.
OWN_ARGUMENTS = True


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """What ``megfm --help`` shows of the command; its options come from ``run``'s parser."""
    parser.add_argument("options", nargs=argparse.REMAINDER, help="run `--help` for every option")


def run(args: argparse.Namespace) -> int:
    """Run ``megfm pretrain`` or ``megfm finetune`` on ``args.options``, the raw arguments."""
    from .data import TrainingDataError  # (imports `datasets`: not for `megfm --help`)

    module = importlib.import_module(f"megfm_hf.training.{args.command}")
    try:
        module.main(args.options, prog=f"megfm {args.command}")
    except TrainingDataError as err:
        print(f"megfm {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
