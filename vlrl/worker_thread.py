"""One long-lived thread per component for its heavy calls, awaited from the event loop.

Why not ``asyncio.to_thread``: the default pool hands successive calls to whichever of
its threads is free, and glibc gives each thread its own malloc arena, which keeps the
peak of every call it served. A warm start's supervised steps spread over six pool
threads held 5.7 GB where the same steps on one thread held 1.9 GB. Tensor-heavy work
(the engine's forward, the trainer's steps) therefore runs on a thread of its own.

On a CPU, every thread that runs a parallel torch op gets an OpenMP team of its own, and
once libgomp manages more threads than there are CPUs it throttles its spin-waits, so each
parallel region of a decode step then waits on a futex: on the 2-vCPU machine a lone
request's token took 6.4 ms instead of 2.5 ms once another thread (the trainer's, or the
event loop copying new weights) had run one (2026-12-06). ``threads_here(1)`` keeps the
calling thread's ops on itself, and a CPU trainer colocated with the HF engine runs on the
engine's thread (``vlrl.recipes.parts.start``), so one team serves both.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class WorkerThread:
    """Run callables one at a time on a single named thread; ``await worker.run(fn, ...)``."""

    def __init__(self, name: str):
        self.name = name
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop taking calls; the thread ends after the call it is running (if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def threads_here(n: int) -> int | None:
    """Run the calling thread's parallel torch ops on ``n`` threads (libgomp's per-thread setting; other threads keep
    theirs); returns the number it had. None where torch does not use the libgomp it ships (Intel OpenMP, macOS)."""
    import torch

    path = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not path.is_file():
        return None
    libgomp = ctypes.CDLL(str(path))
    torch.get_num_threads()  # torch's first call on a thread sets its threads to torch's global: let it come first
    before = libgomp.omp_get_max_threads()
    libgomp.omp_set_num_threads(n)
    return before
