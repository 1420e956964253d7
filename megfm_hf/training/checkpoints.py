"""Crash-safe checkpoints: only a checkpoint known to be complete is ever resumed from.

The ``Trainer`` writes ``checkpoint-N`` folders in place, file by file. A run killed during
that write leaves a folder that looks like a checkpoint but is not one. A callback therefore
marks each checkpoint complete, atomically, once the ``Trainer`` has written all of it, and a
resume takes the newest marked checkpoint after moving unmarked ones out of the way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "megfm_checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: Path, content: dict) -> None:
    """Write JSON to ``path`` through a synced temporary file and a rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class CheckpointCompletionCallback(TrainerCallback):
    """Marks a ``checkpoint-N`` folder complete after the ``Trainer`` has saved all of it."""

    def on_save(self, args, state, control, **kwargs):
        # Every process writes part of a checkpoint (its own RNG state at least): mark it only
        # once all of them are done.
        PartialState().wait_for_everyone()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_json_atomic(
                folder / COMPLETE_MARKER, {"global_step": state.global_step, "time": time.time()}
            )


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(output_dir).iterdir() if Path(output_dir).is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint marked complete in ``output_dir``, or None."""
    complete = [
        path for _, path in _checkpoints(Path(output_dir)) if (path / COMPLETE_MARKER).is_file()
    ]
    return complete[-1] if complete else None


def discard_incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Move checkpoints without the completion mark aside (``incomplete-checkpoint-N``).

    They are kept for inspection but renamed so neither the ``Trainer`` nor a resume mistakes
    them for checkpoints. Returns the new paths.
    """
    moved = []
    for step, path in _checkpoints(Path(output_dir)):
        if (path / COMPLETE_MARKER).is_file():
            continue
        target = path.with_name(f"incomplete-checkpoint-{step}-{int(time.time())}")
        logger.warning(
            "checkpoint %s was not written completely; moving it to %s", path.name, target.name
        )
        shutil.move(str(path), str(target))
        moved.append(target)
    return moved
