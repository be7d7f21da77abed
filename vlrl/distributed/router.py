"""Engine replicas in Ray actors behind one engine: the router the rollout manager talks to.

Placement: a conversation (the first part of a request id: a trajectory's turns and its
verifier calls, see ``vlrl.engines.base``) stays on the replica that served it first, so
its cached prefix is reused; a new one goes to the replica with the fewest outstanding
tokens (what its requests may still generate, plus the prompts it has not started on).

Failover: when a replica's process dies, each of its requests in flight goes on at a
survivor from where it was (the prompt plus the tokens already streamed, with the token
budget that is left), so the caller's stream holds every token once, each with the
logprob and weight version that produced it; its verifier calls are asked again there.
The lost replica is replaced by a new actor that loads the latest weights before it takes
requests (``engine.restart_replicas``), if the cluster can place it.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Sequence

import ray
import torch
from PIL import Image
from ray.exceptions import RayActorError, TaskCancelledError

from vlrl.config import EngineConfig, ModelConfig
from vlrl.distributed.cluster import actor_options, placed
from vlrl.distributed.replica import EngineReplica
from vlrl.engines.base import Engine, NamedTensors, remember
from vlrl.engines.sampling import continued
from vlrl.types import Completion, Delta, FinishReason, NextTokenScores, SamplingParams

_Actor = ray.remote(EngineReplica)


@dataclass
class _Slot:
    """One replica's place: its actor (None while lost or starting) and the work it holds."""

    index: int
    handle: Any = None
    pid: int = 0
    outstanding: dict[int, int] = field(default_factory=dict)  # call serial -> tokens it may still cost
    requests: int = 0  # calls placed here since the last ``take_stats``

    def load(self) -> int:
        return sum(self.outstanding.values())


@dataclass
class _Flight:
    """A request in flight: where it runs now and what reached the caller."""

    slot: _Slot
    rid: str  # its id on the replica (a failover part carries a suffix)
    stream: Any = None
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    base: int = 0  # tokens streamed by earlier parts, on replicas since lost
    aborted: bool = False

    def completion(self, request_id: str, finish: FinishReason) -> Completion:
        return Completion(request_id, tuple(self.ids), tuple(self.logprobs), tuple(self.versions), finish)


class ReplicaRouter(Engine):
    """``engine.replicas`` engines of ``engine.kind`` in Ray actors, as one ``Engine``. See the module docstring."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, placement_timeout_s: float):
        self.model_cfg, self.engine_cfg, self.timeout_s = model, engine, placement_timeout_s
        self.slots = [_Slot(i) for i in range(engine.replicas)]
        self.version = 0
        self.eos_ids: tuple[int, ...] = ()
        self._homes: OrderedDict[str, _Slot] = OrderedDict()  # conversation -> its replica
        self._flights: dict[str, _Flight] = {}
        self._done: OrderedDict[str, Completion] = OrderedDict()
        self._weights: tuple[Any, int] | None = None  # the last weights pushed (an object-store ref) and version
        self._restarting: set[asyncio.Task] = set()
        self._serial = itertools.count()
        self._closing = False
        self._counts = {"failovers": 0, "losses": 0, "restarts": 0}
        self._engines: dict[str, float] = {}  # the replicas' engine counters, summed (``take_stats``)

    @classmethod
    async def create(cls, model: ModelConfig, engine: EngineConfig, placement_timeout_s: float) -> ReplicaRouter:
        """Start every replica (in parallel) and wait until each has loaded its model."""
        router = cls(model, engine, placement_timeout_s)
        try:
            await asyncio.gather(*(router._start(slot) for slot in router.slots))
        except BaseException:
            await router.close()
            raise
        return router

    # ----------------------------------------------------------------- engine protocol

    async def generate(self, prompt_ids: Sequence[int], images: Sequence[Image.Image], sampling: SamplingParams,
                       request_id: str) -> AsyncIterator[Delta]:
        prompt, images = [int(t) for t in prompt_ids], list(images)
        flight: _Flight | None = None
        finished: Delta | None = None
        try:
            for part in itertools.count():
                slot = await self._pick(request_id)
                if flight is None:
                    flight = self._flights[request_id] = _Flight(slot, request_id)
                    params = sampling
                else:
                    flight.slot, flight.rid, flight.base = slot, f"{request_id}/failover-{part}", len(flight.ids)
                    params = continued(sampling, flight.ids, part)
                if params.max_tokens == 0:  # the lost replica had generated the whole budget
                    finished = Delta(request_id, (), (), self.version, "length")
                    yield finished
                    return
                serial = next(self._serial)
                slot.outstanding[serial] = len(prompt) + len(flight.ids) + params.max_tokens
                handle = slot.handle
                flight.stream = handle.generate.options(num_returns="streaming").remote(
                    prompt + flight.ids, images, params, flight.rid)
                try:
                    async for ref in flight.stream:
                        delta: Delta = await ref
                        flight.ids += delta.token_ids
                        flight.logprobs += delta.logprobs
                        flight.versions += [delta.version] * len(delta.token_ids)
                        slot.outstanding[serial] = params.max_tokens - (len(flight.ids) - flight.base)
                        delta = replace(delta, request_id=request_id)
                        if delta.finish_reason is not None:
                            finished = delta
                        yield delta
                        if finished is not None:
                            return
                    raise RuntimeError(f"engine replica {slot.index}: request {flight.rid!r} ended without a "
                                       "finish reason")
                except (RayActorError, TaskCancelledError) as e:
                    if flight.aborted:  # aborted before the replica took it, or the replica died as it was aborted
                        finished = Delta(request_id, (), (), self.version, "abort")
                        yield finished
                        return
                    if isinstance(e, TaskCancelledError):
                        raise
                    self._lose(slot, handle, e)
                    self._counts["failovers"] += 1
                finally:
                    slot.outstanding.pop(serial, None)
        finally:
            if flight is not None:
                if finished is None and flight.stream is not None:  # the caller stopped reading
                    ray.cancel(flight.stream)
                self._flights.pop(request_id, None)
                remember(self._done, request_id,
                         flight.completion(request_id, finished.finish_reason if finished else "abort"))

    async def abort(self, request_id: str) -> Completion:
        flight = self._flights.get(request_id)
        if flight is None:
            if request_id in self._done:
                return self._done[request_id]
            raise KeyError(f"no request {request_id!r}")
        flight.aborted = True
        handle = flight.slot.handle
        if handle is not None:
            try:
                part: Completion = await handle.abort.remote(flight.rid)
            except (RayActorError, KeyError):  # lost, or it has not taken the request yet: cancel it there
                if flight.stream is not None:
                    ray.cancel(flight.stream)
            else:
                head = slice(0, flight.base)
                return Completion(request_id, tuple(flight.ids[head]) + part.token_ids,
                                  tuple(flight.logprobs[head]) + part.logprobs,
                                  tuple(flight.versions[head]) + part.versions, "abort", part.cached_tokens)
        return flight.completion(request_id, "abort")

    async def prefill(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        return await self._call(request_key, "prefill", len(prompt_ids), list(prompt_ids), list(images))

    async def score_next(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image],
                         token_ids: Sequence[int]) -> NextTokenScores:
        return await self._call(request_key, "score_next", len(prompt_ids), list(prompt_ids), list(images),
                                list(token_ids))

    async def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        """Put the weights in the object store once; every live replica loads them (a restarted one, too)."""
        items = named_tensors.items() if hasattr(named_tensors, "items") else named_tensors
        with torch.no_grad():
            ref = ray.put({name: tensor.detach().to("cpu") for name, tensor in items})
        self._weights = (ref, version)
        live = [(slot, slot.handle) for slot in self.slots if slot.handle is not None]
        results = await asyncio.gather(*(h.update_weights.remote(ref, version) for _, h in live),
                                       return_exceptions=True)
        for (slot, handle), result in zip(live, results):
            if isinstance(result, RayActorError):
                self._lose(slot, handle, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                for name, value in result.items():
                    self._engines[name] = self._engines.get(name, 0.0) + value
        self.version = version

    async def reset_prefix_cache(self) -> None:
        await asyncio.gather(*(slot.handle.reset_prefix_cache.remote() for slot in self.slots if slot.handle))

    async def close(self) -> None:
        self._closing = True
        for task in self._restarting:
            task.cancel()
        await asyncio.gather(*self._restarting, return_exceptions=True)
        live = [slot.handle for slot in self.slots if slot.handle is not None]
        await asyncio.gather(*(asyncio.wait_for(h.close.remote(), 60) for h in live),
                             return_exceptions=True)
        for handle in live:
            ray.kill(handle)
        for slot in self.slots:
            slot.handle = None

    def take_stats(self) -> dict[str, float]:
        """Calls placed on each replica, requests moved off a lost replica, replicas lost and restarted, and
        replicas alive now; the replicas' own engine counters summed, as they stood at the last weight push; the
        counts are since the last call."""
        stats: dict[str, float] = dict(self._engines)
        self._engines = {}
        stats |= {f"replica_{slot.index}_requests": slot.requests for slot in self.slots}
        stats |= {f"replica_{name}": count for name, count in self._counts.items()}
        stats["replicas_alive"] = sum(slot.handle is not None for slot in self.slots)
        for slot in self.slots:
            slot.requests = 0
        self._counts = dict.fromkeys(self._counts, 0)
        return stats

    async def replica_info(self) -> list[dict[str, Any]]:
        """Each live replica's process id, weight version and the request ids it served."""
        live = [slot.handle for slot in self.slots if slot.handle is not None]
        return list(await asyncio.gather(*(h.info.remote() for h in live)))

    # ----------------------------------------------------------------- placement and failover

    async def _pick(self, request_id: str) -> _Slot:
        """The conversation's replica while it lives, else the least loaded live one (waiting for a restart if none)."""
        key = request_id.split("/", 1)[0]
        home = self._homes.get(key)
        if home is None or home.handle is None:
            while not (live := [slot for slot in self.slots if slot.handle is not None]):
                if not self._restarting:
                    raise RuntimeError(f"request {request_id!r}: every one of the {len(self.slots)} engine replicas "
                                       "is gone and none could be restarted")
                await asyncio.wait(self._restarting, return_when=asyncio.FIRST_COMPLETED)
            home = min(live, key=lambda slot: (slot.load(), slot.index))
        remember(self._homes, key, home, limit=65_536)
        home.requests += 1
        return home

    async def _call(self, request_key: str, method: str, prompt_tokens: int, *args: Any) -> Any:
        """A one-shot call on the conversation's replica, asked again elsewhere if that replica is lost."""
        while True:
            slot = await self._pick(request_key)
            serial, handle = next(self._serial), slot.handle
            slot.outstanding[serial] = prompt_tokens
            try:
                return await getattr(handle, method).remote(request_key, *args)
            except RayActorError as e:
                self._lose(slot, handle, e)
                self._counts["failovers"] += 1
            finally:
                slot.outstanding.pop(serial, None)

    async def _start(self, slot: _Slot) -> None:
        """A new actor in ``slot``: placed, its model loaded, then the latest weights, before it takes requests."""
        resources = self.engine_cfg.replica_resources
        handle = _Actor.options(**actor_options(resources), max_restarts=0).remote(self.model_cfg, self.engine_cfg,
                                                                                     slot.index)
        try:
            info = await placed("engine replicas", handle.start.remote(), resources, len(self.slots),
                                self.timeout_s)
            loaded = None
            while self._weights is not None and loaded != self._weights[1]:
                ref, loaded = self._weights
                await handle.update_weights.remote(ref, loaded)
        except BaseException:
            ray.kill(handle)
            raise
        self.eos_ids = tuple(info["eos_ids"])
        slot.handle, slot.pid = handle, info["pid"]

    def _lose(self, slot: _Slot, handle: Any, error: BaseException) -> None:
        """Mark ``slot``'s replica lost (once, however many of its calls saw it die) and start a replacement."""
        if slot.handle is not handle:
            return
        slot.handle = None
        self._counts["losses"] += 1
        ray.kill(handle)
        print(f"engine replica {slot.index} (pid {slot.pid}) is lost: {type(error).__name__}; its requests go on "
              f"at the others", file=sys.stderr)
        if self.engine_cfg.restart_replicas and not self._closing:
            task = asyncio.create_task(self._restart(slot))
            self._restarting.add(task)
            task.add_done_callback(self._restarting.discard)

    async def _restart(self, slot: _Slot) -> None:
        try:
            await self._start(slot)
        except Exception as e:
            print(f"engine replica {slot.index} could not be restarted: {e}", file=sys.stderr)
            return
        self._counts["restarts"] += 1
        print(f"engine replica {slot.index} restarted (pid {slot.pid}, weights version {self.version})",
              file=sys.stderr)
