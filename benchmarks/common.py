"""What every benchmark script shares: the start of its record (date, device, versions), the
CPU's name for it, and writing the record."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
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


def record_header(
    benchmark: str,
    *libraries: ModuleType,
    kind: str = "cpu",
    name: str | None = None,
    device: Mapping[str, Any] | None = None,
    versions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The start of a results record: the benchmark, the UTC date, the device and the versions.

    Parameters
    ----------
    benchmark : str
        The record's ``benchmark`` name.
    *libraries : module
        Modules whose ``__version__`` the record lists (Python's is always there).
    kind : str
        ``cpu`` or ``cuda``.
    name : str, optional
        The device's name (a GPU's); the CPU's name by default.
    device, versions : mapping, optional
        Further device fields and versions.
    """
    return {
        "benchmark": benchmark,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": {
            "kind": kind,
            "name": name or cpu_name(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            **(device or {}),
        },
        "versions": {
            "python": platform.python_version(),
            **{library.__name__: library.__version__ for library in libraries},
            **(versions or {}),
        },
    }
