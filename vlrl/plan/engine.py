"""A cost-model engine: the engine protocol with no model, decoding in steps whose length the cost model gives.

Every step decodes one token for each running request and prefills what joined since the
last step (new requests' uncached prompt tokens, verifier pieces), then sleeps the step's
cost on the loop's clock: under ``vlrl.plan.clock`` that is simulated time. How many
tokens each policy turn writes comes from a ``Script`` (trajectory id -> tokens per turn),
counted across the requests a pause splits it into, so an answer keeps its length however
it is scheduled. The KV cache is modelled as the HF engine keeps it: a trajectory's prefix
(and its group's shared prompt) is reused at the weight version it was computed with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

from PIL import Image

from vlrl.engines.base import Engine
from vlrl.plan.clock import settle
from vlrl.plan.costs import Costs
from vlrl.types import Completion, Delta, NextTokenScores, SamplingParams

Script = Callable[[str], Sequence[int]]  # trajectory id -> policy tokens of each of its turns
FILLER = 40  # the token every simulated turn writes (its text plays no part in the twin)


@dataclass
class _Request:
    id: str
    traj: str
    turn: int
    max_tokens: int
    prefill: int  # tokens to compute when it joins
    prompt: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    made: int = 0
    gone: bool = False


class CostEngine(Engine):
    """See the module docstring. ``shared_prompt``: leading prompt tokens a group's trajectories share."""

    def __init__(self, costs: Costs, script: Script, eos_id: int, shared_prompt: int = 0):
        self.costs, self.script, self.eos_ids, self.version = costs, script, (eos_id,), 0
        self.shared_prompt = shared_prompt
        self._running: list[_Request] = []
        self._joining: list[_Request] = []
        self._work: list[tuple[int, asyncio.Future[None]]] = []  # prefill-only pieces: tokens, done
        self._made: dict[tuple[str, int], int] = {}  # (trajectory, turn) -> tokens written, across requests
        self._cached: dict[str, tuple[int, int]] = {}  # cache key -> (tokens, version)
        self._loop: asyncio.Task[None] | None = None

    async def generate(self, prompt_ids: Sequence[int], images: Sequence[Image.Image], sampling: SamplingParams,
                       request_id: str) -> AsyncIterator[Delta]:
        traj, turn = _turn_of(request_id)
        group = traj.rsplit("-", 1)[0]
        reused = max(self._hit(traj), min(self._hit(group), self.shared_prompt))
        req = _Request(request_id, traj, turn, sampling.max_tokens, max(len(prompt_ids) - reused, 1),
                       len(prompt_ids))
        self._joining.append(req)
        self._wake()
        try:
            while (delta := await req.queue.get()) is not None:
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            req.gone = True
            self._cached[traj] = (req.prompt + req.made, self.version)
            self._cached[group] = (self.shared_prompt, self.version)

    async def abort(self, request_id: str) -> Completion:
        for req in [*self._running, *self._joining]:
            if req.id == request_id and not req.gone:
                req.gone = True
                req.queue.put_nowait(Delta(request_id, (), (), self.version, "abort"))
        return Completion(request_id, (), (), (), "abort")

    async def prefill(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        reused = self._hit(request_key)
        await self._compute(len(prompt_ids) - reused)
        self._cached[request_key] = (len(prompt_ids), self.version)
        return reused

    async def score_next(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image],
                         token_ids: Sequence[int]) -> NextTokenScores:
        reused = await self.prefill(request_key, prompt_ids, images)
        return NextTokenScores(tuple(-0.693 for _ in token_ids), reused)

    async def update_weights(self, named_tensors: object, version: int) -> None:
        self.version = version

    async def reset_prefix_cache(self) -> None:
        self._cached.clear()

    async def close(self) -> None:
        for req in [*self._running, *self._joining]:
            await self.abort(req.id)
        if self._loop is not None:
            self._loop.cancel()

    def _hit(self, key: str) -> int:
        tokens, version = self._cached.get(key, (0, -1))
        return tokens if version == self.version else 0

    async def _compute(self, tokens: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._work.append((max(tokens, 0), done))
        self._wake()
        await done

    def _wake(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._running or self._joining or self._work:
            await settle()  # what joins or leaves at this instant does so before this step
            joining, self._joining = [r for r in self._joining if not r.gone], []
            work, self._work = self._work, []
            batch = [r for r in self._running if not r.gone] + joining
            prefill = sum(r.prefill for r in joining) + sum(n for n, _ in work)
            context = sum(r.prompt + r.made for r in batch)
            await asyncio.sleep((self.costs.decode_step_s(len(batch), context) if batch else 0.0)
                                + self.costs.prefill_per_token_s * prefill)
            for _, done in work:
                done.set_result(None)
            self._running = [r for r in batch if not r.gone]
            for req in self._running:
                self._emit(req)
            self._running = [r for r in self._running if not r.gone]

    def _emit(self, req: _Request) -> None:
        key = (req.traj, req.turn)
        self._made[key] = self._made.get(key, 0) + 1
        req.made += 1
        turns = self.script(req.traj)
        ended = self._made[key] >= turns[min(req.turn, len(turns) - 1)]
        reason = "stop" if ended else ("length" if req.made >= req.max_tokens else None)
        req.queue.put_nowait(Delta(req.id, (self.eos_ids[0] if ended else FILLER,), (-1.0,), self.version, reason))
        if reason is not None:
            req.gone = True


def _turn_of(request_id: str) -> tuple[str, int]:
    """(trajectory, turn) of a rollout manager's request id: ``{trajectory}/t{turn}[/resumed-{part}]``."""
    parts = request_id.split("/")
    if len(parts) < 2 or not parts[1].startswith("t") or not parts[1][1:].isdigit():
        raise ValueError(f"request id {request_id!r} is not a rollout manager's ({{trajectory}}/t{{turn}}...)")
    return parts[0], int(parts[1][1:])
