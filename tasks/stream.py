"""Endless seeded streams: sample k is ``make(k)``, rendered in order, ahead of time in worker processes if asked.

Rendering a chart takes tens of milliseconds, as long as a small model's training step on
it, so a run that renders in its own process pays twice. With ``workers`` > 1 a pool of
spawned processes renders the next chunks while the consumer works; the order, and so
every sample, is the same for any worker count.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import count
from typing import Callable, Iterator

from vlrl.lifeline import die_with
from vlrl.types import Sample

CHUNK = 8  # samples per job
AHEAD = 2  # jobs queued per worker


def indexed_stream(make: Callable[[int], Sample], workers: int = 1) -> Iterator[Sample]:
    """``make(0), make(1), ...``; ``make`` must be picklable (a module-level function or a partial of one)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return map(make, count()) if workers == 1 else _pooled(make, workers)


def _pooled(make: Callable[[int], Sample], workers: int) -> Iterator[Sample]:
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with,
                               initargs=(os.getpid(),))  # a killed run leaves no renderer behind
    try:
        starts = count(0, CHUNK)
        pending: deque[Future] = deque(pool.submit(_chunk, make, next(starts)) for _ in range(workers * AHEAD))
        while True:
            done = pending.popleft().result()
            pending.append(pool.submit(_chunk, make, next(starts)))
            yield from done
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _chunk(make: Callable[[int], Sample], start: int) -> list[Sample]:
    return [make(k) for k in range(start, start + CHUNK)]
