"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh mapping
and unmaps it on free, and each thread's arena returns its free pages too; the next tensor
of that size faults every page in again. A CPU update allocates and frees logits and
activations of tens to hundreds of MiB per micro-batch. On the 2-vCPU machine (2026-12-06)
`vlrl bench overlap --schedules sync --steps 4` took 20.2 million minor page faults and 72 s
of kernel time, its update 3.0-8.2 s a step (a mean of 4.16 s) on batches of one size; with
one arena, no mmap for large blocks and trimming only above 2 GiB, the same run took 1.4
million faults and 15 s, its update 2.2-3.1 s (2.49 s), and a lower peak RSS (4.9 GB
against 6.8 GB): what is freed is reused. (PyTorch's CPU tuning guides reach the same end
by preloading jemalloc or tcmalloc.) Set ``VLRL_MALLOC=system`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP = (1 << 31) - 1  # free memory at the heap's top kept up to 2 GiB before it is trimmed (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Tune this process's glibc malloc to keep and reuse what it frees; call it before the threads that allocate
    start (their arenas are chosen then). False where the C library is not glibc or ``VLRL_MALLOC=system``."""
    if os.environ.get("VLRL_MALLOC", "keep") == "system":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    return all(libc.mallopt(param, value) == 1
               for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP)))
