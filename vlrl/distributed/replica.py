"""One rollout engine (HF or vLLM) in a Ray actor, serving the engine protocol to a router.

The actor process owns the engine; the router in the driver calls it. A request's deltas
stream back as they come, merged while the caller is busy (one Ray message per batch of
tokens, not per token), so the per-token cost of the extra process hop stays small.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any, AsyncIterator, Sequence

from PIL import Image

from vlrl.allocator import keep_freed_memory
from vlrl.config import EngineConfig, ModelConfig
from vlrl.engines import make_engine
from vlrl.engines.base import Engine
from vlrl.types import Completion, Delta, NextTokenScores, SamplingParams

SERVED_KEPT = 4096  # request ids a replica remembers serving (for `replica_info`)


class EngineReplica:
    """The actor class; ``ray.remote(EngineReplica)`` makes it one (see ``vlrl.distributed.router``)."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, index: int):
        keep_freed_memory()  # a process of its own (vlrl/allocator.py)
        self.model_cfg, self.engine_cfg, self.index = model, engine, index
        self.engine: Engine | None = None
        self.served: deque[str] = deque(maxlen=SERVED_KEPT)

    async def start(self) -> dict[str, Any]:
        """Load the model; returns what the router needs to know (end-of-sequence ids, version, process id)."""
        self.engine = await make_engine(self.model_cfg, self.engine_cfg)
        return {"eos_ids": self.engine.eos_ids, "version": self.engine.version, "pid": os.getpid()}

    async def generate(self, prompt_ids: Sequence[int], images: Sequence[Image.Image], sampling: SamplingParams,
                       request_id: str) -> AsyncIterator[Delta]:
        """The engine's stream, with deltas that arrived together merged into one."""
        self.served.append(request_id)
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        reader = asyncio.create_task(_read(self._engine().generate(prompt_ids, images, sampling, request_id), queue))
        try:
            while True:
                item = await queue.get()
                ready = [item]
                while not queue.empty() and isinstance(ready[-1], Delta) and ready[-1].finish_reason is None:
                    ready.append(queue.get_nowait())
                for delta in merge(ready):
                    if isinstance(delta, BaseException):
                        raise delta
                    if delta is None:
                        return
                    yield delta
                    if delta.finish_reason is not None:
                        return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def abort(self, request_id: str) -> Completion:
        return await self._engine().abort(request_id)

    async def prefill(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        self.served.append(request_key)
        return await self._engine().prefill(request_key, prompt_ids, images)

    async def score_next(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image],
                         token_ids: Sequence[int]) -> NextTokenScores:
        self.served.append(request_key)
        return await self._engine().score_next(request_key, prompt_ids, images, token_ids)

    async def update_weights(self, weights: dict[str, Any], version: int) -> dict[str, float]:
        """Load the weights; the engine's counters since the last push (the router adds them to its own)."""
        await self._engine().update_weights(weights, version)
        return self._engine().take_stats()

    async def reset_prefix_cache(self) -> None:
        await self._engine().reset_prefix_cache()

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()

    def info(self) -> dict[str, Any]:
        """Process id, weight version and the request ids served (the most recent ``SERVED_KEPT``)."""
        return {"index": self.index, "pid": os.getpid(), "version": self._engine().version,
                "served": list(self.served)}

    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError(f"engine replica {self.index} was not started (call start first)")
        return self.engine


async def _read(stream: AsyncIterator[Delta], queue: asyncio.Queue) -> None:
    """Move ``stream`` into ``queue``, then None; an error goes in as the last item. Cancelling this task
    cancels the engine's stream, which the engine treats as an abort."""
    try:
        async for delta in stream:
            queue.put_nowait(delta)
        queue.put_nowait(None)
    except Exception as e:
        queue.put_nowait(e)


def merge(items: list[Any]) -> list[Any]:
    """Consecutive deltas of one weight version joined into one (finish reason and cached tokens kept)."""
    out: list[Any] = []
    for item in items:
        last = out[-1] if out else None
        if isinstance(item, Delta) and isinstance(last, Delta) and last.version == item.version \
                and last.finish_reason is None:
            out[-1] = Delta(last.request_id, last.token_ids + item.token_ids, last.logprobs + item.logprobs,
                            last.version, item.finish_reason, last.cached_tokens or item.cached_tokens)
        else:
            out.append(item)
    return out
