"""Scale-out on Ray: engine replicas behind a router, and data-parallel trainer ranks.

Imported only when ``distributed.backend`` is ``ray``; the single-process path never
imports Ray.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class TrainerRankLost(RuntimeError):
    """A data-parallel trainer rank died during a step; ``checkpoint`` is where the run resumes (None: its start)."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


@contextlib.contextmanager
def cluster(backend: str, address: str) -> Iterator[None]:
    """Inside: connected to the Ray cluster at ``address`` (a local one started for "" and stopped after);
    nothing at all for backend ``none``."""
    if backend == "none":
        yield
        return
    from vlrl.distributed.cluster import connect, disconnect

    started = connect(address)
    try:
        yield
    finally:
        disconnect(started)
