"""An engine whose answers have known lengths, decoding in lockstep ticks: for checking schedules by hand.

Every tick, each running request gets one token; a trajectory whose script says L tokens
ends (end-of-sequence) at its L-th token, counting the tokens it had before a pause; or, with
``tokens_of``, a request writes the given tokens and then end-of-sequence. Between
ticks the event loop runs until everything else has settled, so the order in which
trajectories finish is the order of their lengths, whatever asyncio does.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Optional, Sequence

from PIL import Image

from vlrl.engines.base import Engine
from vlrl.types import Completion, Delta, NextTokenScores, SamplingParams

TOKEN = 40  # a plain text token of the tiny tokenizer


class ScriptedEngine(Engine):
    def __init__(self, length_of: Callable[[str], int], eos_id: int, settle: int = 200,
                 tokens_of: Optional[Callable[[str], Sequence[int]]] = None):
        self.length_of, self.eos_ids, self.version, self.settle = length_of, (eos_id,), 0, settle
        self.tokens_of = tokens_of  # request id -> the tokens it writes (instead of length_of's filler)
        self.ticks = 0
        self.made: dict[str, int] = {}  # trajectory -> tokens generated so far, across its requests
        self._queues: dict[str, asyncio.Queue] = {}
        self._out: dict[str, list[int]] = {}
        self._loop: asyncio.Task | None = None

    async def generate(self, prompt_ids: Sequence[int], images: Sequence[Image.Image], sampling: SamplingParams,
                       request_id: str) -> AsyncIterator[Delta]:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id], self._out[request_id] = queue, []
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())
        try:
            while (delta := await queue.get()) is not None:
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:  # a stream closed early (its task cancelled) is an abort: the request leaves the batch
            self._queues.pop(request_id, None)

    async def _run(self) -> None:
        while self._queues:
            for _ in range(self.settle):
                await asyncio.sleep(0)
            self.ticks += 1
            for rid, queue in list(self._queues.items()):
                if self.tokens_of is not None:
                    script, made = self.tokens_of(rid), len(self._out[rid])
                    last = made >= len(script)
                    token = self.eos_ids[0] if last else script[made]
                else:
                    traj = rid.split("/")[0]
                    self.made[traj] = self.made.get(traj, 0) + 1
                    last = self.made[traj] >= self.length_of(traj)
                    token = self.eos_ids[0] if last else TOKEN
                self._out[rid].append(token)
                queue.put_nowait(Delta(rid, (token,), (-1.0,), self.version, "stop" if last else None))
                if last:
                    del self._queues[rid]

    async def advance(self, ticks: int) -> None:
        """Return once ``ticks`` more ticks have passed (or nothing is left to decode): a trainer's update that
        takes that long while the engine goes on decoding."""
        until = self.ticks + ticks
        while self.ticks < until and self._queues:
            await asyncio.sleep(0)

    async def abort(self, request_id: str) -> Completion:
        queue = self._queues.pop(request_id, None)
        if queue is not None:
            queue.put_nowait(Delta(request_id, (), (), self.version, "abort"))
        ids = tuple(self._out.get(request_id, ()))
        return Completion(request_id, ids, (-1.0,) * len(ids), (self.version,) * len(ids), "abort")

    async def update_weights(self, named_tensors, version: int) -> None:
        self.version = version

    async def prefill(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        return 0

    async def score_next(self, request_key, prompt_ids, images, token_ids) -> NextTokenScores:
        return NextTokenScores(tuple(-1.0 for _ in token_ids))

    async def reset_prefix_cache(self) -> None:
        pass

    async def close(self) -> None:
        for rid in list(self._queues):
            await self.abort(rid)
