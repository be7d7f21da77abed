"""A cost-model engine: the engine protocol with no model, decoding in steps whose length the cost model gives.

Every step decodes one token for each running request and prefills what joined since the
last step (new requests' uncached prompt tokens and the images among them, verifier
pieces), then sleeps the step's
cost on the loop's clock: under ``vlrl.plan.clock`` that is simulated time. With ``tick``
above 1 it runs up to that many steps between joins and hands each request its tokens in
one delta (at the step a request ends, if it ends among them). How many
tokens each policy turn writes comes from a ``Script`` (trajectory id -> tokens per turn),
counted across the requests a pause splits it into, so an answer keeps its length however
it is scheduled. The KV cache is modelled as the HF engine keeps it: a group's requests of
the same prompt (``_twin_key``) that join together compute it once, a trajectory's prefix
(and its group's shared prompt, or a turn's prompt its twin computed) is reused at the
weight version it was computed with, by
its next turn and by its verifier alike (the verifier reads the trajectory's own ids), and
a running turn's KV by its verifier's streamed pieces.
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

STATS = ("busy_s", "decode_s", "decode_steps", "decode_rows", "decode_positions", "prefill_s", "prefill_positions",
         "prefill_images", "cache_s", "cache_positions")  # of ``take_stats``
Script = Callable[[str], Sequence[int]]  # trajectory id -> policy tokens of each of its turns
FILLER = 40  # the token every simulated turn writes (its text plays no part in the twin)
IMAGE = 41  # marks where a simulated prompt's or observation's image is: a prefill from before it encodes it


@dataclass
class _Request:
    id: str
    traj: str
    turn: int
    max_tokens: int
    prefill: int  # tokens to compute when it joins
    images: int  # images among them (each through the vision encoder)
    prompt: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    made: int = 0
    gone: bool = False
    version: int = 0  # the weights its prompt was computed with
    twin: str = ""  # a fresh turn's key among its group's (``CostEngine._twin_key``); "" for a resumed one


class CostEngine(Engine):
    """See the module docstring. ``shared_prompt``: leading prompt tokens a group's trajectories share."""

    def __init__(self, costs: Costs, script: Script, eos_id: int, shared_prompt: int = 0, max_batch: int = 0,
                 tick: int = 1):
        """``max_batch``: requests decoded together (0: all; the rest wait to join, as in a real engine).
        ``tick``: decode steps per emitted delta at most (1: a delta per token; more: a simulation of thousands of
        requests runs fast, joins and aborts land on a tick's boundary)."""
        if max_batch < 0 or tick < 1:
            raise ValueError(f"max_batch must be >= 0 and tick >= 1, got {max_batch} and {tick}")
        self.costs, self.script, self.eos_ids, self.version = costs, script, (eos_id,), 0
        self.shared_prompt, self.max_batch, self.tick = shared_prompt, max_batch, tick
        self._running: list[_Request] = []
        self._joining: list[_Request] = []
        self._work: list[tuple[int, int, asyncio.Future[None]]] = []  # prefill-only pieces: tokens, images, done
        self._made: dict[tuple[str, int], int] = {}  # (trajectory, turn) -> tokens written, across requests
        self._cached: dict[str, tuple[int, int]] = {}  # cache key -> (tokens, version)
        self._live: dict[str, _Request] = {}  # trajectory -> its running request
        self._rows = 0  # the batch's requests at its last step, those that ended then among them
        self._loop: asyncio.Task[None] | None = None
        self._stats = dict.fromkeys(STATS, 0.0)

    async def generate(self, prompt_ids: Sequence[int], images: Sequence[Image.Image], sampling: SamplingParams,
                       request_id: str) -> AsyncIterator[Delta]:
        traj, turn = _turn_of(request_id)
        fresh = request_id.count("/") == 1  # not a paused request's resumption, whose answer so far is its own
        key = self._twin_key(traj, turn, len(prompt_ids))
        shared = (min(self._hit(key), len(prompt_ids) - 1) if fresh
                  else min(self._hit(self._twin_key(traj, 0, self.shared_prompt)), self.shared_prompt))
        reused = max(self._reuse(traj, len(prompt_ids)), shared)
        req = _Request(request_id, traj, turn, sampling.max_tokens, max(len(prompt_ids) - reused, 1),
                       list(prompt_ids[reused:]).count(IMAGE), len(prompt_ids), version=self.version,
                       twin=key if fresh else "")
        self._live[traj] = req
        self._joining.append(req)
        self._wake()
        try:
            while (delta := await req.queue.get()) is not None:
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            req.gone = True
            if self._live.get(traj) is req:
                del self._live[traj]
            self._cached[traj] = (req.prompt + req.made, self.version)
            if req.twin:
                self._cached[req.twin] = (req.prompt, self.version)

    async def abort(self, request_id: str) -> Completion:
        for req in [*self._running, *self._joining]:
            if req.id == request_id and not req.gone:
                req.gone = True
                req.queue.put_nowait(Delta(request_id, (), (), self.version, "abort"))
        return Completion(request_id, (), (), (), "abort")

    async def prefill(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        reused = self._reuse(request_key.split("/")[0], len(prompt_ids))
        await self._compute(len(prompt_ids) - reused, list(prompt_ids[reused:]).count(IMAGE))
        self._cached[request_key] = (len(prompt_ids), self.version)
        return reused

    async def score_next(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image],
                         token_ids: Sequence[int]) -> NextTokenScores:
        reused = await self.prefill(request_key, prompt_ids, images)
        return NextTokenScores(tuple(-0.693 for _ in token_ids), reused)

    async def update_weights(self, named_tensors: object, version: int) -> None:
        self.version = version

    def take_stats(self) -> dict[str, float]:
        """The HF engine's counters of the same names (``STATS``): the seconds charged, before ``rollout_factor``."""
        stats, self._stats = self._stats, dict.fromkeys(STATS, 0.0)
        stats["busy_s"] = stats["decode_s"] + stats["prefill_s"] + stats["cache_s"]
        return stats

    async def reset_prefix_cache(self) -> None:
        self._cached.clear()

    async def close(self) -> None:
        for req in [*self._running, *self._joining]:
            await self.abort(req.id)
        if self._loop is not None:
            self._loop.cancel()

    def _reuse(self, traj: str, tokens: int) -> int:
        """Cached tokens a request of the trajectory reuses: its turns' or its verifier's (both hold its ids, as the
        HF engine's content-addressed cache finds), or its running turn's, all but the last of ``tokens`` at most."""
        live = self._live.get(traj)
        running = live.prompt + live.made if live is not None and live.version == self.version else 0
        return min(max(self._hit(traj), self._hit(f"{traj}/verify"), running), tokens - 1)

    def _hit(self, key: str) -> int:
        tokens, version = self._cached.get(key, (0, -1))
        return tokens if version == self.version else 0

    async def _compute(self, tokens: int, images: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._work.append((max(tokens, 0), images, done))
        self._wake()
        await done

    def _wake(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._running or self._joining or self._work:
            await settle()  # what joins or leaves at this instant does so before this step
            running = [r for r in self._running if not r.gone]
            waiting = [r for r in self._joining if not r.gone]
            room = self.max_batch - len(running) if self.max_batch else len(waiting)
            joining, self._joining = waiting[:max(room, 0)], waiting[max(room, 0):]
            work, self._work = self._work, []
            self._share_prompts(joining)
            left = self._rows > len(running)
            self._running = batch = running + joining
            prefills = [(r.prefill, r.images) for r in joining] + [(tokens, images) for tokens, images, _ in work]
            prefill_s = sum(self.costs.prefill_s(tokens, images) for tokens, images in prefills)
            self._stats["prefill_s"] += prefill_s
            self._stats["prefill_positions"] += sum(tokens for tokens, _ in prefills)
            self._stats["prefill_images"] += sum(images for _, images in prefills)
            cache_s = self._rebuild(running if left else []) + self._rebuild(batch if joining else [])
            await self._tick(batch, prefill_s + cache_s, [done for _, _, done in work])
            self._rows = len(batch)
            self._running = [r for r in batch if not r.gone]

    def _share_prompts(self, joining: list[_Request]) -> None:
        """A group's fresh turns that join together with the same prompt (``_twin_key``) compute it once (the HF
        engine prefills identical prompts of one step once): the others compute nothing."""
        seen: set[str] = set()
        for r in joining:
            if r.twin in seen:
                r.prefill = r.images = 0
            elif r.twin:
                seen.add(r.twin)

    def _twin_key(self, traj: str, turn: int, prompt: int) -> str:
        """What a trajectory's turn of a ``prompt``-token prompt shares with its group's others: the group, the
        lengths of the turns before it and of the prompt. The group's samples of a prompt share it; a turn after
        equally long earlier turns is taken as having the same prompt (a group's tool calls are often the same few
        tokens, the tool's image the same): a real run's lengths say nothing of its tokens, and the HF engine's
        content-addressed cache shares what is the same."""
        group = traj.rsplit("-", 1)[0]
        return f"{group}|{prompt}|" + ",".join(str(self._made.get((traj, t), 0)) for t in range(turn))

    def _rebuild(self, rows: list[_Request]) -> float:
        """Seconds to rebuild a padded batch's cache of ``rows`` (none: nothing to rebuild, or a paged cache)."""
        if not rows or not self.costs.padded_batch:
            return 0.0
        positions = len(rows) * max(r.prompt + r.made for r in rows)
        seconds = positions * self.costs.cache_per_position_s
        self._stats["cache_positions"] += positions
        self._stats["cache_s"] += seconds
        return seconds

    async def _tick(self, batch: list[_Request], ahead_s: float, work: list[asyncio.Future[None]]) -> None:
        """Up to ``tick`` decode steps of ``batch`` (after ``ahead_s`` of prefill and cache): a request that ends
        within them gets its tokens at the step it ends, the others theirs at the tick's end; what joins waits for
        that end."""
        spans = [min(self._left(r), self.tick) for r in batch]
        done_steps = 0
        for end in sorted(set(spans)) or [0]:
            steps = end - done_steps
            alive = [r for r, span in zip(batch, spans) if span >= end]  # those still decoding through this stretch
            lengths = [r.prompt + r.made + done_steps for r in alive]
            context = len(alive) * max(lengths, default=0) if self.costs.padded_batch else sum(lengths)
            growth = len(alive) * steps * (steps - 1) / 2  # the context the stretch's own tokens add
            decode_s = (steps * self.costs.decode_step_s(len(alive), context)
                        + self.costs.decode_per_context_token_s * growth)
            self._count(steps, len(alive), steps * context + growth, decode_s)
            await asyncio.sleep(self.costs.rollout_factor * (decode_s + ahead_s))
            for done in work:
                done.set_result(None)
            work, ahead_s = [], 0.0
            done_steps = end
            for req, span in zip(batch, spans):
                if span == end and not req.gone:
                    self._emit(req, span)

    def _count(self, steps: int, rows: int, positions: float, decode_s: float) -> None:
        self._stats["decode_steps"] += steps
        self._stats["decode_rows"] += rows * steps
        self._stats["decode_positions"] += positions
        self._stats["decode_s"] += decode_s

    def _left(self, req: _Request) -> int:
        """Tokens until the request ends: its turn's scripted length or its cap."""
        turns = self.script(req.traj)
        turn_left = turns[min(req.turn, len(turns) - 1)] - self._made.get((req.traj, req.turn), 0)
        return max(min(turn_left, req.max_tokens - req.made), 1)

    def _emit(self, req: _Request, steps: int) -> None:
        """``steps`` tokens for the request (its last one the end of the turn if the script says so)."""
        key = (req.traj, req.turn)
        self._made[key] = self._made.get(key, 0) + steps
        req.made += steps
        turns = self.script(req.traj)
        ended = self._made[key] >= turns[min(req.turn, len(turns) - 1)]
        reason = "stop" if ended else ("length" if req.made >= req.max_tokens else None)
        ids = (FILLER,) * (steps - 1) + (self.eos_ids[0] if ended else FILLER,)
        req.queue.put_nowait(Delta(req.id, ids, (-1.0,) * steps, self.version, reason))
        if reason is not None:
            req.gone = True


def _turn_of(request_id: str) -> tuple[str, int]:
    """(trajectory, turn) of a rollout manager's request id: ``{trajectory}/t{turn}[/resumed-{part}]``."""
    parts = request_id.split("/")
    if len(parts) < 2 or not parts[1].startswith("t") or not parts[1][1:].isdigit():
        raise ValueError(f"request id {request_id!r} is not a rollout manager's ({{trajectory}}/t{{turn}}...)")
    return parts[0], int(parts[1][1:])
