"""Freed memory kept in the process: large tensors reused without page faults."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from megfm_hf import cli, memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

#: Frees a 256 MiB tensor, then allocates, fills and frees 128 MiB ones (as a model's
#: intermediate tensors come and go, of changing sizes), before and after `keep_freed_memory`,
#: and counts the page faults of six 128 MiB turns.
FAULTS = textwrap.dedent(
    """
    import json, resource, torch
    from megfm_hf.memory import keep_freed_memory

    def faults():
        block = torch.ones(64 * 2**20)
        del block
        counts = []
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = torch.ones(32 * 2**20)
            del block
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return counts

    system = faults()
    applied = keep_freed_memory()
    print(json.dumps({"applied": applied, "system": system, "kept": faults()}))
    """
)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc settings: Linux with glibc only")
def test_freed_tensors_are_reused_without_faulting_their_pages_in_again():
    """The system default maps every large tensor afresh and faults its pages in each time;
    kept, the heap serves the next tensor from the one just freed."""
    result = subprocess.run(
        [sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True
    )
    counts = json.loads(result.stdout)
    assert counts["applied"] is True
    # 128 MiB is 32,768 pages of 4 KiB (64 huge pages where the kernel gives 2 MiB ones)
    assert min(counts["system"]) >= 50, counts
    # (now and then a small allocation splits the freed block so that a turn does not fit)
    assert sum(counts["kept"]) * 3 <= sum(counts["system"]), counts


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
