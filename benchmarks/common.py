"""What every benchmark script shares: the CPU's name for its record, and writing the record."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo``, or what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def write_results(path: Path, record: Mapping[str, Any], *, indent: int = 2) -> Path:
    """Write a benchmark's record as JSON to ``path`` (its folder is created) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=indent) + "\n")
    return path
