"""Freed memory kept: large tensors come from the heap, which keeps them once freed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from megfm_hf import cli, memory

GLIBC = memory.uses_glibc()

#: Allocates a 256 MiB tensor, as a model's intermediate tensors are, before and after
#: `keep_freed_memory`, and says whether it lies in the heap (`[heap]` in /proc/self/maps) and
#: how large the heap is while the kept one lives and once it is freed.
PLACEMENT = textwrap.dedent(
    """
    import json, torch
    from megfm_hf.memory import keep_freed_memory

    def heap():
        for line in open("/proc/self/maps"):
            if line.rstrip().endswith("[heap]"):
                start, end = (int(value, 16) for value in line.split()[0].split("-"))
                return start, end
        return 0, 0

    def in_heap(tensor):
        start, end = heap()
        return start <= tensor.data_ptr() < end

    block = torch.ones(64 * 2**20)
    system = in_heap(block)
    del block
    applied = keep_freed_memory()
    block = torch.ones(64 * 2**20)
    kept = in_heap(block)
    start, end = heap()
    live = end - start
    del block
    start, end = heap()
    freed = end - start
    print(json.dumps({"applied": applied, "system": system, "kept": kept, "live": live,
                      "freed": freed}))
    """
)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc settings: Linux with glibc only")
def test_large_tensors_come_from_the_heap_and_stay_there_once_freed():
    """The system default maps every large tensor on its own (and unmaps it when freed, so the
    next one faults its pages in again); kept, it comes from the heap, which keeps it once
    freed for the next tensors."""
    result = subprocess.run(
        [sys.executable, "-c", PLACEMENT], capture_output=True, text=True, check=True
    )
    placed = json.loads(result.stdout)
    assert placed["applied"] is True
    assert placed["system"] is False, placed
    assert placed["kept"] is True, placed
    assert placed["live"] >= 256 * 2**20, placed
    assert placed["freed"] == placed["live"], placed


def test_the_commands_that_run_a_model_keep_freed_memory_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(True) or True)
    cases = [
        ("features", None, 1),
        ("features", "0", 0),
        ("features", "1", 1),
        ("pretrain", None, 1),
        ("simulate", None, 0),  # reading and writing recordings leave memory to the system
    ]
    for command, setting, expected in cases:
        calls.clear()
        if setting is None:
            monkeypatch.delenv(memory.ENVIRONMENT_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(memory.ENVIRONMENT_VARIABLE, setting)
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert len(calls) == expected, (command, setting)


@pytest.mark.skipif(GLIBC, reason="checks the platforms without glibc")
def test_other_c_libraries_are_left_as_they_are():
    assert memory.keep_freed_memory() is False
