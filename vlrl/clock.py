"""The clock every rollout span and step time is read from: the running event loop's.

A real run's loop reads ``time.monotonic``; `vlrl plan` runs the same rollout code on a
loop whose clock jumps from one event to the next (``vlrl.plan.clock``), so the spans,
phase times and step times it records come out in simulated seconds.
"""

from __future__ import annotations

import asyncio
import time


def now() -> float:
    """Seconds on the running event loop's clock (``time.monotonic`` outside a loop)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()
