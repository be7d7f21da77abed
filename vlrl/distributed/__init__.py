"""Scale-out on Ray: engine replicas behind a router, and data-parallel trainer ranks.

``open_engine`` and ``cluster`` are where a run chooses between this process and Ray; the
single-process path (``distributed.backend: none``) never imports Ray.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from vlrl.config import DistributedConfig, EngineConfig, ModelConfig
from vlrl.engines import make_engine
from vlrl.engines.base import Engine, PartLost


class TrainerRankLost(PartLost):
    """A data-parallel trainer rank died during a step."""


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


async def open_engine(model: ModelConfig, engine: EngineConfig, distributed: DistributedConfig) -> Engine:
    """The engine a run samples from: one in this process, or (backend ray) ``engine.replicas`` Ray actors behind
    a router, on the cluster the caller has connected to (``vlrl.distributed.cluster.connect``)."""
    if distributed.backend == "none":
        return await make_engine(model, engine)
    from vlrl.distributed.router import ReplicaRouter

    return await ReplicaRouter.create(model, engine, distributed.placement_timeout_s)
