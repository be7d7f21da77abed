"""One long-lived thread per component for its heavy calls, awaited from the event loop.

Why not ``asyncio.to_thread``: the default pool hands successive calls to whichever of
its threads is free, and glibc gives each thread its own malloc arena, which keeps the
peak of every call it served. A warm start's supervised steps spread over six pool
threads held 5.7 GB where the same steps on one thread held 1.9 GB. Tensor-heavy work
(the engine's forward, the trainer's steps) therefore runs on a thread of its own.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
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
