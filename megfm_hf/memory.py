"""Keeping freed memory in the process, for CPU work on large tensors.

glibc's ``malloc`` serves every block larger than its mmap threshold (32 MiB at most) with a
mapping of its own and unmaps it when the block is freed. A forward or backward pass over MEG
windows allocates and frees tensors of tens to hundreds of megabytes in every block of the
model, so each of them is mapped afresh and the kernel faults in and zeroes its pages, one by
one. On a 2-core CPU that was 40% of a pretraining step of the default model at the reference
shape (``benchmarks/README.md``, *Beside LUNA, at the reference shape*).

:func:`keep_freed_memory` has glibc serve those blocks from its heap and keep the freed ones
there for the next allocation. The price: the process's resident memory stays near its peak
until it exits, instead of shrinking between allocations, and a heap that fragments can peak
higher. The ``megfm`` subcommands that run a model (``pretrain``, ``finetune``, ``evaluate``,
``features``, ``demo``) and the training scripts call it when they start
(``MEGFM_KEEP_FREED_MEMORY=0`` in the environment turns that off); a Python session opts in by
calling it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's ``malloc.h``)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: the environment variable that, set to ``0``, keeps the entry points off these settings
ENVIRONMENT_VARIABLE = "MEGFM_KEEP_FREED_MEMORY"


def uses_glibc() -> bool:
    """Whether this process runs on Linux with glibc, whose ``malloc`` these settings tune."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Have this process keep the memory it frees for its next allocations (glibc only).

    Large blocks come from ``malloc``'s heap instead of a mapping each
    (``mallopt(M_MMAP_MAX, 0)``), and the heap is not handed back to the system when its top
    is freed (``mallopt(M_TRIM_THRESHOLD, INT_MAX)``), so that a tensor freed by one layer is
    reused by the next without page faults. It applies to the allocations that follow (data
    loader workers forked later inherit it) and can be called again at no cost.

    Returns
    -------
    bool
        Whether the setting took effect: False where the C library is not glibc (macOS,
        Windows, musl), whose allocators are left as they are.
    """
    if not uses_glibc():
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    )
    if not applied:
        logger.warning("glibc refused the malloc settings; freed memory goes back to the system")
    return applied


def keep_freed_memory_unless_disabled() -> bool:
    """:func:`keep_freed_memory`, unless the environment sets ``MEGFM_KEEP_FREED_MEMORY=0``
    (the entry points' default)."""
    if os.environ.get(ENVIRONMENT_VARIABLE, "1").strip() == "0":
        return False
    return keep_freed_memory()
