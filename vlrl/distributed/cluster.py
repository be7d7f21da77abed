"""Joining (or starting) the Ray cluster a run places its actors on."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, TypeVar

import ray

T = TypeVar("T")


def connect(address: str) -> bool:
    """Join the cluster at ``address`` ("auto": the running one), or start a local one for ""; True if started here.

    A process already connected (a test's fixture, a notebook) keeps its cluster.
    """
    if ray.is_initialized():
        return False
    ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING,
             configure_logging=True, log_to_driver=True)
    return not address


def disconnect(started: bool) -> None:
    """Stop the local cluster if ``connect`` started it."""
    if started and ray.is_initialized():
        ray.shutdown()


async def placed(what: str, awaitable: Awaitable[T], resources: dict[str, float], count: int,
                 timeout_s: float) -> T:
    """``awaitable`` (an actor's first call), or a TimeoutError saying what could not be placed and what is free."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except asyncio.TimeoutError:
        raise TimeoutError(
            f"Ray could not place {count} {what} with {resources} each within {timeout_s:.0f} s; the cluster has "
            f"{_free()} free (lower the resources per actor, or add nodes)") from None


def _free() -> dict[str, Any]:
    return {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU", "memory")}


def actor_options(resources: dict[str, float]) -> dict[str, Any]:
    """Ray actor options asking for ``resources`` ({CPU: 1, GPU: 1, custom: n})."""
    rest = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    return {"num_cpus": resources.get("CPU", 0.0), "num_gpus": resources.get("GPU", 0.0),
            **({"resources": rest} if rest else {})}
