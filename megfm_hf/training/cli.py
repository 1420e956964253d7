"""``megfm pretrain`` and ``megfm finetune``: the training scripts behind the main command.

Their options are dataclass fields parsed by ``HfArgumentParser`` (the run's own arguments
and the transformers ``TrainingArguments``), so this module only forwards the command line.
"""

from __future__ import annotations

import argparse
import importlib

#: These subcommands print their own (HfArgumentParser) help.
ADD_HELP = False


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("options", nargs=argparse.REMAINDER, help="run `--help` for every option")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"megfm_hf.training.{args.command}")
    module.main(args.options)
    return 0
