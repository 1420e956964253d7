"""The ``megfm`` command line.

Every subcommand lives in the module that does its work; this file only maps names to those
modules and imports a module when its subcommand runs, so ``megfm --help`` stays fast. A
subcommand module defines ``configure_parser(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. A module that parses its own command line (the
training commands, whose options are ``HfArgumentParser`` dataclasses) sets
``OWN_ARGUMENTS = True``: it gets every argument after its name untouched, ``--help``
included, as ``args.options``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .memory import keep_freed_memory_unless_disabled

#: subcommand name -> (module path, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("megfm_hf.simulation.cli", "generate a simulated multi-state MEG cohort (BIDS)"),
    "build-dataset": ("megfm_hf.data.cli", "package MEG recordings as a datasets dataset"),
    "pretrain": ("megfm_hf.training.cli", "masked-signal pretraining on a window dataset"),
    "finetune": ("megfm_hf.training.cli", "fine-tune a classifier with subject-wise splits"),
    "evaluate": (
        "megfm_hf.evaluation.cli",
        "evaluate a pretrained model: reconstruction, attention maps, classification",
    ),
    "features": ("megfm_hf.inference.cli", "one feature vector per window of MEG recordings"),
    "card": ("megfm_hf.hub.card_cli", "write the model card (README.md) of a saved model"),
    "push": ("megfm_hf.hub.cli", "publish a saved model (and its dataset) to the Hugging Face Hub"),
    "demo": ("megfm_hf.demo", "the whole journey on a simulated cohort, with a report"),
}

#: Subcommands whose work is a model's forward and backward passes: their process keeps the
#: memory it frees for its next tensors (:func:`~megfm_hf.memory.keep_freed_memory`), which on
#: a CPU spares the page faults of every large tensor. The others (reading, simulating,
#: packaging, publishing) leave memory to the system.
MODEL_SUBCOMMANDS = frozenset({"pretrain", "finetune", "evaluate", "features", "demo"})


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand configured."""
    parser = argparse.ArgumentParser(
        prog="megfm",
        description="megfm-hf: a Hugging Face-native foundation model for MEG.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_path, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_path)
        own = getattr(module, "OWN_ARGUMENTS", False)
        subparser = subparsers.add_parser(
            name, help=help_text, description=help_text, add_help=not own
        )
        module.configure_parser(subparser)
        subparser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``megfm`` console script.

    The subcommands that run a model keep the memory they free for their next tensors
    (:data:`MODEL_SUBCOMMANDS`; ``MEGFM_KEEP_FREED_MEMORY=0`` turns it off).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MODEL_SUBCOMMANDS:
        keep_freed_memory_unless_disabled()
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        if getattr(module, "OWN_ARGUMENTS", False):
            # argparse would take the options for its own (`--help`, `--dataset ...`) and
            # refuse them: hand them over as they are.
            return int(module.run(argparse.Namespace(command=argv[0], options=argv[1:])) or 0)
    args = build_parser().parse_args(argv)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
