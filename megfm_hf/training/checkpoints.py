"""Crash-safe checkpoints: only a checkpoint known to be complete is ever resumed from.

The ``Trainer`` writes ``checkpoint-N`` folders in place, file by file, and then deletes the
oldest checkpoints beyond ``save_total_limit``. A run killed during the write leaves a folder
that looks like a checkpoint but is not one. :class:`~megfm_hf.training.MEGTrainer` therefore
syncs every file of a new checkpoint to disk and marks it complete, atomically, before any
older checkpoint is deleted (:func:`mark_checkpoint_complete`), so a complete checkpoint
exists at every moment; a resume takes the newest marked checkpoint after moving unmarked
ones out of the way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "megfm_checkpoint_complete.json"
#: Name prefix of checkpoints moved aside because they were not written completely.
INCOMPLETE_PREFIX = "incomplete-checkpoint-"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A run cannot be resumed from the checkpoints in its output folder."""


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) from the operating system's cache to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json_atomic(path: Path, content: dict) -> None:
    """Write JSON to ``path`` through a synced temporary file and a rename (itself synced)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync(path.parent)


def mark_checkpoint_complete(folder: str | Path, global_step: int) -> Path:
    """Sync every file of a written checkpoint to disk, then mark the checkpoint complete.

    Parameters
    ----------
    folder : str | Path
        A ``checkpoint-N`` folder that every process has finished writing.
    global_step : int
        The optimiser step the checkpoint holds (recorded in the mark).

    Returns
    -------
    Path
        The completion mark, ``folder / COMPLETE_MARKER``.

    Notes
    -----
    The files are synced first, so that a power loss after the mark cannot leave a marked
    checkpoint whose files never reached the disk.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"cannot mark checkpoint {folder} complete: it is not a folder.")
    for directory, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(directory) / name)
        _fsync(Path(directory))
    marker = folder / COMPLETE_MARKER
    write_json_atomic(marker, {"global_step": global_step, "time": time.time()})
    return marker


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
    """Move checkpoints without the completion mark aside (``incomplete-checkpoint-N-TIME``).

    They are kept for inspection but renamed so neither the ``Trainer`` nor a resume mistakes
    them for checkpoints. Returns the new paths.
    """
    moved = []
    for step, path in _checkpoints(Path(output_dir)):
        if (path / COMPLETE_MARKER).is_file():
            continue
        target = path.with_name(f"{INCOMPLETE_PREFIX}{step}-{int(time.time())}")
        logger.warning(
            "checkpoint %s was not written completely; moving it to %s", path.name, target.name
        )
        shutil.move(str(path), str(target))
        moved.append(target)
    return moved


def discarded_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoints of ``output_dir`` that :func:`discard_incomplete_checkpoints` moved
    aside, oldest name first."""
    output_dir = Path(output_dir)
    found = output_dir.glob(f"{INCOMPLETE_PREFIX}*") if output_dir.is_dir() else []
    return sorted(path for path in found if path.is_dir())
