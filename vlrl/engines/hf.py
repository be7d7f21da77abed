"""HF engine: pure transformers + torch, continuous batching with a KV cache.

Requests join and leave between decode steps. A new request is prefilled from the
longest kept prefix of its ids (the KV of finished, aborted and prefilled requests is
kept, up to a token budget, so a trajectory's next turn, a resumed request or the G
samples of one prompt skip what was already computed); the requests that arrive in one
step are prefilled together, those of similar uncached lengths in one multi-row forward
(the verifier's chunks from many trajectories cost one prefill, not one each), and a
prefill also reads the KV of a running request of its conversation (a verifier streamed
while its trajectory decodes computes almost nothing). Then they
join one left-padded batch whose KV cache persists across steps; every step decodes one
token for every running request. Model work runs on the engine's own thread under a lock, so the
event loop never blocks and weight updates happen between steps. A text-only model folder (a
judge: ``Qwen2ForCausalLM`` and the like) runs too, with 1-D positions and no images.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, DynamicCache

from vlrl.engines.base import (
    Engine,
    NamedTensors,
    check_model_dir,
    check_prompt,
    check_token_ids,
    model_eos_ids,
    remember,
)
from vlrl.engines.kv_cache import GrowingCache, left_padded, select_rows
from vlrl.engines.sampling import sample_next, stop_reached
from vlrl.model.attention import attention_for
from vlrl.model.batching import padded_runs
from vlrl.model.rope import mrope_positions
from vlrl.types import Completion, Delta, FinishReason, NextTokenScores, SamplingParams
from vlrl.vision import VisionInputs
from vlrl.worker_thread import WorkerThread

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (1, H, L, D)

PIECES_TOGETHER, PIECE_WAIT_STEPS = 8, 4  # a verifier's requests wait for up to 8 others or 4 steps (_admissible)
STATS = {  # the engine's counters (``take_stats``), with what each counts
    "busy_s": "seconds the engine's thread spent in steps (what follows, and the requests' bookkeeping)",
    "decode_s": "seconds in decode forwards and their sampling",
    "decode_steps": "decode forwards",
    "decode_rows": "requests decoded, summed over the decode forwards",
    "decode_positions": "positions the decode forwards attended to, padding included (rows x the batch's width)",
    "prefill_s": "seconds in prefill forwards (their images' encoding and first samples included)",
    "prefill_forwards": "prefill forwards",
    "prefill_rows": "requests prefilled (rows / forwards: how well prefills batch)",
    "prefill_positions": "positions the prefill forwards computed, padding included",
    "prefill_images": "images the prefill forwards encoded",
    "cache_s": "seconds rebuilding the running batch's KV cache as requests join and leave it",
    "cache_positions": "positions of the rebuilt caches (rows x width), each copied once",
    "kv_peak_positions": "the most positions the running batch's KV held at once (rows x width, padding included); "
                         "x kv_bytes_per_token: its memory, which engine.kv_cache_gib bounds",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _Prefix:
    """KV of ``ids`` kept for reuse; ``image_keys`` identify the images inside ``ids``."""

    ids: torch.Tensor  # (L,) token ids
    image_keys: list[str]
    kv: KV
    version: int


@dataclass
class _Request:
    id: str
    prompt_ids: list[int]
    images: list[Image.Image]
    image_keys: list[str]
    sampling: SamplingParams
    cache_key: str  # where its KV is kept when it ends
    score_ids: tuple[int, ...] = ()  # prefill-only requests: next tokens whose logprobs to report
    scores: tuple[float, ...] = ()
    queue: asyncio.Queue[Delta | Exception | None] = field(default_factory=asyncio.Queue)
    generator: torch.Generator | None = None
    suppress: torch.Tensor | None = None
    out_ids: list[int] = field(default_factory=list)
    out_logprobs: list[float] = field(default_factory=list)
    out_versions: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    # decode state, owned by the worker thread
    kv: KV | None = None
    next_pos: int = 0
    reused: int = 0
    waited: int = 0  # engine steps a verifier's piece has waited to share a forward
    kv_version: int = -1  # the weight version its prefill ran at (its KV serves others only at that version)

    @property
    def wants_logits(self) -> bool:
        """Whether its prefill must produce next-token logits (to sample or to score); a verifier's piece need not."""
        return self.sampling.max_tokens > 0 or bool(self.score_ids)

    @property
    def fed_ids(self) -> list[int]:
        """Ids whose KV the cache holds: the prompt and all generated tokens but the last."""
        return self.prompt_ids + self.out_ids[:-1]


@dataclass
class _Prefill:
    """A request's prefill: the ids after its reused prefix, their positions (3, n), the prefix KV, new images."""

    req: _Request
    ids: list[int]
    positions: torch.Tensor
    kv: KV | None
    images: list[Image.Image]


class _Batch:
    """The running requests and their left-padded shared KV cache."""

    def __init__(self) -> None:
        self.rows: list[_Request] = []
        self.cache: GrowingCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)

    def drop(self, gone: set[str]) -> list[tuple[_Request, KV]]:
        """Remove rows whose id is in ``gone``; return their own (unpadded) KV."""
        out = []
        keep = [i for i, r in enumerate(self.rows) if r.id not in gone]
        for i, r in enumerate(self.rows):
            if r.id in gone:
                pad = int((self.mask[i] == 0).sum())
                kv = [(k[i : i + 1, :, pad:].clone(), v[i : i + 1, :, pad:].clone()) for k, v, *_ in self.cache]
                out.append((r, kv))
        if len(keep) == len(self.rows):
            return out
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask = None, torch.zeros(0, 0, dtype=torch.long)
            return out
        idx = torch.tensor(keep)
        self.mask = self.mask[idx]
        lead = int((self.mask == 0).long().cumprod(dim=1).sum(dim=1).min())  # padding every row shares
        self.cache = select_rows(self.cache, idx, lead)
        self.mask = self.mask[:, lead:]
        return out

    def join(self, reqs: list[_Request]) -> None:
        """Add prefilled requests, left-padding every row to the longest (one copy of the cache per step)."""
        if not reqs:
            return
        kvs = []
        for req in reqs:
            assert req.kv is not None
            kvs.append(req.kv)
            req.kv = None
        lengths = [kv[0][0].shape[2] for kv in kvs]
        width = self.mask.shape[1] if self.rows else 0
        total = max(width, *lengths)
        self.cache = left_padded(([[(k, v) for k, v, *_ in self.cache]] if self.rows else []) + kvs)
        masks = [F.pad(self.mask, (total - width, 0))] if self.rows else []
        masks += [torch.cat([torch.zeros(total - n, dtype=torch.long), torch.ones(n, dtype=torch.long)])[None]
                  for n in lengths]
        self.mask = torch.cat(masks)
        self.rows += reqs


class HFEngine(Engine):
    """Engine over a transformers model, for CPU or GPU. See the module docstring."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        prefix_cache_tokens: int = 65536,
        max_prefill_tokens: int = 8192,
        min_pixels: int = 0,
        max_pixels: int = 0,
        kv_cache_gib: float = 0.0,
        batch_invariant: bool = False,
    ):
        """``kv_cache_gib`` (0: no bound but ``max_num_seqs``): a request waits while admitting it could grow the
        running batch's keys and values past this many GiB before its rows end; a request alone always runs.
        ``batch_invariant``: each request prefilled and decoded alone from its own ids, no KV taken from another
        or kept for one, so its logits do not depend on which requests arrived together (``determinism: strict``)."""
        model_dir = check_model_dir(model_dir)
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(DTYPES)}")
        self.vision = VisionInputs(model_dir, min_pixels, max_pixels)
        auto = AutoModelForCausalLM if self.vision.text_only else AutoModelForImageTextToText
        self.model = auto.from_pretrained(
            model_dir, dtype=DTYPES[dtype], attn_implementation=attention_for(device)).to(device).eval()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        text = self.model.config.get_text_config()
        self.vocab_size: int = text.vocab_size
        self.max_model_len = max_model_len or text.max_position_embeddings
        self.batch_invariant = batch_invariant
        self.max_num_seqs = 1 if batch_invariant else max_num_seqs
        self.prefix_cache_tokens = 0 if batch_invariant else prefix_cache_tokens
        self.max_prefill_tokens = max_prefill_tokens
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.kv_bytes_per_token: int = (2 * text.num_hidden_layers * text.num_key_value_heads * head_dim
                                        * DTYPES[dtype].itemsize)
        self.max_kv_positions = int(kv_cache_gib * 2**30) // self.kv_bytes_per_token if kv_cache_gib > 0 else 0
        self._stats = dict.fromkeys(STATS, 0.0)  # since the last ``take_stats``
        self.eos_ids = model_eos_ids(model_dir)
        self.version = 0
        self._waiting: list[_Request] = []
        self._requests: dict[str, _Request] = {}
        self._batch = _Batch()
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._gone: set[str] = set()
        self._done: OrderedDict[str, Completion] = OrderedDict()  # recently ended, for late aborts
        self._ids = itertools.count()
        self.worker = WorkerThread("vlrl-hf-engine")  # its forwards; a colocated CPU trainer shares it (recipes.parts)

    # ----------------------------------------------------------------- public API

    async def generate(
        self,
        prompt_ids: Sequence[int],
        images: Sequence[Image.Image],
        sampling: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[Delta]:
        req = self._admit(prompt_ids, images, sampling, request_id, cache_key=request_id)
        try:
            while True:
                delta = await req.queue.get()
                if delta is None:
                    return
                if isinstance(delta, Exception):
                    raise RuntimeError(f"HF engine: the step running request {request_id!r} failed: {delta}") from delta
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if req.finish is None:  # the consumer stopped reading: treat it as an abort
                self._finish(req, "abort")
            self._retire(req)

    async def abort(self, request_id: str) -> Completion:
        req = self._requests.get(request_id)
        if req is None:
            if request_id in self._done:
                return self._done[request_id]
            raise KeyError(f"no request {request_id!r}")
        if req.finish is None:
            self._finish(req, "abort")
            req.queue.put_nowait(Delta(req.id, (), (), self.version, "abort"))
        return _completion(req)

    async def prefill(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        return (await self._prefill_only(request_key, prompt_ids, images, ())).reused

    async def score_next(
        self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image], token_ids: Sequence[int]
    ) -> NextTokenScores:
        wanted = tuple(check_token_ids(token_ids, self.vocab_size, request_key))
        req = await self._prefill_only(request_key, prompt_ids, images, wanted)
        return NextTokenScores(req.scores, req.reused)

    async def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        items = named_tensors.items() if hasattr(named_tensors, "items") else named_tensors
        state = self.model.state_dict()
        async with self._get_lock():
            with torch.no_grad():
                for name, tensor in items:
                    if name not in state:
                        raise KeyError(f"update_weights: the model has no parameter {name!r}")
                    if state[name].shape != tensor.shape:
                        raise ValueError(
                            f"update_weights: {name!r} has shape {tuple(state[name].shape)}, "
                            f"got {tuple(tensor.shape)}"
                        )
                    state[name].copy_(tensor)
            self._prefixes.clear()
            self.version = version

    def take_stats(self) -> dict[str, float]:
        """``STATS``: where the engine's time went, and the work it did for it."""
        stats, self._stats = self._stats, dict.fromkeys(STATS, 0.0)
        return stats

    async def reset_prefix_cache(self) -> None:
        async with self._get_lock():
            self._prefixes.clear()

    async def close(self) -> None:
        for req in list(self._requests.values()):
            if req.finish is None:
                await self.abort(req.id)
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            self._loop_task = None
        self.worker.close()

    # ------------------------------------------------------------- event-loop side

    def _admit(
        self,
        prompt_ids: Sequence[int],
        images: Sequence[Image.Image],
        sampling: SamplingParams,
        request_id: str,
        cache_key: str,
        score_ids: tuple[int, ...] = (),
    ) -> _Request:
        ids = check_prompt(prompt_ids, self.vocab_size, self.max_model_len, request_id)
        live = self._requests.get(request_id)
        if live is not None and live.finish is None:
            raise ValueError(f"request id {request_id!r} is already running")
        prepared = self.vision.prepare_for(ids, images, where=f"request {request_id!r}")
        req = _Request(
            id=request_id, prompt_ids=ids, images=prepared, image_keys=[_image_key(im) for im in prepared],
            sampling=sampling, cache_key=cache_key, score_ids=score_ids,
        )
        if sampling.seed is not None:
            req.generator = torch.Generator().manual_seed(sampling.seed)
        req.suppress = torch.tensor(sorted(set(self.vision.vision_token_ids) | set(sampling.suppress_token_ids)))
        self._requests[request_id] = req
        self._waiting.append(req)
        self._ensure_loop()
        assert self._wake is not None
        self._wake.set()
        return req

    async def _prefill_only(
        self, key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image], score_ids: tuple[int, ...]
    ) -> _Request:
        """Run the prompt's uncached part, keep its KV under ``key``, and read ``score_ids``' logprobs."""
        req = self._admit(
            prompt_ids, images, SamplingParams(max_tokens=0), f"prefill-{key}-{next(self._ids)}", cache_key=key,
            score_ids=score_ids,
        )
        while (item := await req.queue.get()) is not None:
            if isinstance(item, Exception):
                raise RuntimeError(f"HF engine: prefill of {key!r} failed: {item}") from item
        self._retire(req)
        return req

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """The engine's one background task: step while there is work, then sleep."""
        assert self._wake is not None
        while True:
            if not self._waiting and not self._batch.rows:
                self._wake.clear()
                await self._wake.wait()
            async with self._get_lock():
                admit, self._waiting = self._admissible()
                gone, self._gone = self._gone, set()
                try:
                    results = await self.worker.run(self._step, admit, gone)
                except Exception as e:  # a failed forward must not leave consumers waiting forever
                    self._fail_running(admit, e)
                    continue
            for req, token, logprob, version in results:
                self._emit(req, token, logprob, version)
            for req in admit:
                if req.sampling.max_tokens == 0:
                    req.queue.put_nowait(None)

    def _admissible(self) -> tuple[list[_Request], list[_Request]]:
        """(requests to prefill this step, requests left waiting).

        Generation up to the batch's free rows, in arrival order, while the KV the batch could
        reach stays within ``max_kv_positions`` (rows x the longest prompt + max_tokens; the
        first request that would pass it waits, and every later one with it). A verifier's requests
        (its pieces and its scores: prefill only) never take a row, and while the batch
        decodes they wait for company, so many share one forward instead of one each:
        they join the first step that admits generation, runs no decode, or finds
        ``PIECES_TOGETHER`` of them or one that waited ``PIECE_WAIT_STEPS`` steps. The wait
        is hidden under the decoding that goes on; a score the step waits for comes when
        the decoding ends.
        """
        rows = self._batch.rows
        room = self.max_num_seqs - len(rows)
        reach = max(map(self._reach, rows), default=0)
        admit, waiting, pieces = [], [], []
        for req in self._waiting:
            if req.finish is not None:
                continue
            if req.sampling.max_tokens == 0:
                pieces.append(req)
                continue
            grown = max(reach, self._reach(req))
            n = len(rows) + len(admit) + 1
            if room > 0 and (not self.max_kv_positions or n == 1 or n * grown <= self.max_kv_positions):
                admit.append(req)
                room, reach = room - 1, grown
            else:
                room = 0  # in arrival order: no later request passes one that waits
                waiting.append(req)
        if (admit or not self._batch.rows or len(pieces) >= PIECES_TOGETHER
                or any(piece.waited >= PIECE_WAIT_STEPS for piece in pieces)):
            return admit + pieces, waiting
        for piece in pieces:
            piece.waited += 1
        return admit, waiting + pieces

    def _reach(self, req: _Request) -> int:
        """The most positions a generating request's KV can hold: its prompt and every token it may sample."""
        return min(len(req.prompt_ids) + req.sampling.max_tokens, self.max_model_len)

    def _fail_running(self, admitted: list[_Request], error: Exception) -> None:
        """Hand ``error`` to every request the failed step touched; the engine starts clean."""
        for req in {id(r): r for r in [*self._batch.rows, *admitted]}.values():
            if req.finish is None:
                req.finish = "abort"
            req.queue.put_nowait(error)
        self._batch = _Batch()

    def _emit(self, req: _Request, token: int, logprob: float, version: int) -> None:
        if req.finish is not None:  # aborted while the step ran: the token is discarded
            return
        req.out_ids.append(token)
        req.out_logprobs.append(logprob)
        req.out_versions.append(version)
        finish = self._finish_reason(req, token)
        if finish is not None:
            self._finish(req, finish)
        cached = req.reused if len(req.out_ids) == 1 else 0
        req.queue.put_nowait(Delta(req.id, (token,), (logprob,), version, finish, cached))

    def _finish_reason(self, req: _Request, token: int) -> FinishReason | None:
        p = req.sampling
        if token in self.eos_ids or token in p.stop_token_ids:
            return "stop"
        if stop_reached(self.tokenizer, p, req.out_ids, len(req.out_ids) - 1) is not None:
            return "stop"
        if len(req.out_ids) >= p.max_tokens or len(req.prompt_ids) + len(req.out_ids) >= self.max_model_len:
            return "length"
        return None

    def _retire(self, req: _Request) -> None:
        """Forget a request whose stream has ended, remembering its result for a while."""
        if self._requests.get(req.id) is req:
            del self._requests[req.id]
        remember(self._done, req.id, _completion(req))

    def _finish(self, req: _Request, reason: FinishReason) -> None:
        req.finish = reason
        self._gone.add(req.id)
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------ worker-thread side

    @torch.no_grad()
    def _step(self, admit: list[_Request], gone: set[str]) -> list[tuple[_Request, int, float, int]]:
        began, rows = time.perf_counter(), len(self._batch.rows)
        for req, kv in self._batch.drop(gone):
            self._keep_prefix(req.cache_key, req.fed_ids, req.image_keys, kv)
        if self._batch.rows and len(self._batch.rows) != rows:
            self._count_cache(began)
        decoding = time.perf_counter()
        results = self._decode() if self._batch.rows else []
        prefilling = time.perf_counter()
        self._stats["decode_s"] += prefilling - decoding
        leaders: dict[tuple, _Request] = {}  # prompt -> the request that prefills it; a group's others share it
        for req in sorted(admit, key=lambda r: not r.wants_logits):  # a leader that yields logits, if any does
            leaders.setdefault((tuple(req.prompt_ids), tuple(req.image_keys)), req)
        logits = self._prefill_all(list(leaders.values()))
        joining: list[_Request] = []
        for req in admit:
            leader = leaders[(tuple(req.prompt_ids), tuple(req.image_keys))]
            if leader is not req:
                req.kv, req.next_pos, req.kv_version = leader.kv, leader.next_pos, leader.kv_version
                req.reused = len(req.prompt_ids) - 1  # counted as vLLM does: the last prompt token is computed
            if req.sampling.max_tokens == 0:
                if req.score_ids:
                    logprobs = torch.log_softmax(logits[leader.id][0].float(), dim=-1)
                    req.scores = tuple(logprobs[list(req.score_ids)].tolist())
                self._keep_prefix(req.cache_key, req.prompt_ids, req.image_keys, req.kv)
                req.finish = "length"
                continue
            (tok,), (lp,) = sample_next(logits[leader.id], [req.sampling], [req.generator], [req.suppress])
            results.append((req, tok, lp, self.version))
            joining.append(req)
        joined = time.perf_counter()
        self._stats["prefill_s"] += joined - prefilling
        if joining:
            self._batch.join(joining)
            self._count_cache(joined)
        self._stats["busy_s"] += time.perf_counter() - began
        return results

    def _count_cache(self, since: float) -> None:
        """Count a rebuild of the running batch's cache that began at ``since``."""
        self._stats["cache_s"] += time.perf_counter() - since
        self._stats["cache_positions"] += len(self._batch.rows) * self._batch.mask.shape[1]

    def _prefill_all(self, reqs: list[_Request]) -> dict[str, torch.Tensor]:
        """Run every request's uncached prompt, several rows to a forward; each request's next-token logits (1, V).

        Requests of similar uncached lengths share a forward (a verifier's chunks from many
        trajectories become one multi-row prefill); each forward stays under
        ``max_prefill_tokens`` padded tokens and wastes at most a third of them on padding.
        """
        # a verifier's piece whose KV is all cached has nothing to run
        works = [w for w in map(self._uncached, reqs) if w.ids]
        logits: dict[str, torch.Tensor] = {}
        runs = [[w] for w in works] if self.batch_invariant else padded_runs(works, self.max_prefill_tokens,
                                                                            lambda w: len(w.ids))
        for run in runs:
            logits.update(zip((w.req.id for w in run), self._forward_prefill(run)))
        return logits

    def _uncached(self, req: _Request) -> _Prefill:
        """What the request's prefill must compute: the prompt after its longest cached prefix (kept or running)."""
        ids = req.prompt_ids
        positions = torch.arange(len(ids)).expand(3, 1, -1) if self.vision.text_only else \
            mrope_positions(self.model, torch.tensor([ids]), self.vision.grid(req.images))
        runs = self.vision.pad_runs(ids)
        start, kv = self._reuse_prefix(req, runs)
        req.next_pos = int(positions.max()) + 1
        req.reused = start
        req.kv_version = self.version
        # only the images the reused prefix does not cover go through the processor
        images = [im for im, (s, _) in zip(req.images, runs) if s >= start]
        return _Prefill(req, ids[start:], positions[:, 0, start:], kv, images)

    def _forward_prefill(self, works: list[_Prefill]) -> list[torch.Tensor]:
        """One forward over ``works``: each row's reused KV left-padded to the longest, its new ids right-padded.

        Sets each request's full KV; returns each one's next-token logits (1, V). A single
        row runs unpadded and unmasked.
        """
        past = [w.kv[0][0].shape[2] if w.kv else 0 for w in works]
        new = [len(w.ids) for w in works]
        width, length = max(past), max(new)
        template = next((w.kv for w in works if w.kv), None)
        if template is None:
            cache = DynamicCache(config=self.model.config)
        else:  # one copy of the reused prefixes, left-padded; the new tokens are written into its room
            empty = [(k[:, :, :0], v[:, :, :0]) for k, v in template]
            cache = left_padded([w.kv or empty for w in works], room=length)
        filler = self.eos_ids[0]  # padding never reads an image: it is no <|image_pad|>
        input_ids = torch.tensor([w.ids + [filler] * (length - len(w.ids)) for w in works])
        positions = torch.stack([torch.cat([w.positions, w.positions[:, -1:].expand(3, length - len(w.ids))], 1)
                                 for w in works], 1)  # padding repeats the last position
        mask = torch.tensor([[0] * (width - p) + [1] * (p + n) + [0] * (length - n) for p, n in zip(past, new)])
        images = [im for w in works for im in w.images]
        pixels = self.vision.encode(images)
        last = sorted({n - 1 for n in new})  # the positions whose logits are read: no (rows x length x vocab) logits
        vision = {} if pixels is None else {"pixel_values": pixels.pixel_values.to(self.device, self.model.dtype),
                                            "image_grid_thw": pixels.grid_thw.to(self.device)}
        out = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=self._positions(positions),
            attention_mask=mask.to(self.device) if len(works) > 1 else None,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=torch.tensor(last, device=self.device),
            **vision,
        )
        self._stats["prefill_forwards"] += 1
        self._stats["prefill_rows"] += len(works)
        self._stats["prefill_positions"] += len(works) * length
        self._stats["prefill_images"] += len(images)
        kv = [(k, v) for k, v, *_ in out.past_key_values]
        logits = []
        for i, (w, p, n) in enumerate(zip(works, past, new)):
            keep = slice(width - p, width + n)
            w.req.kv = kv if len(works) == 1 else [(k[i: i + 1, :, keep].clone(), v[i: i + 1, :, keep].clone())
                                                   for k, v in kv]
            logits.append(out.logits[i: i + 1, last.index(n - 1)])
        return logits

    def _decode(self) -> list[tuple[_Request, int, float, int]]:
        batch = self._batch
        rows = batch.rows
        input_ids = torch.tensor([[r.out_ids[-1]] for r in rows], device=self.device)
        positions = torch.tensor([r.next_pos for r in rows]).view(1, -1, 1).expand(3, -1, -1)
        mask = torch.cat([batch.mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        out = self.model(
            input_ids=input_ids,
            position_ids=self._positions(positions),
            attention_mask=mask.to(self.device),
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.mask = mask
        for r in rows:
            r.next_pos += 1
        self._stats["decode_steps"] += 1
        self._stats["decode_rows"] += len(rows)
        self._stats["decode_positions"] += mask.numel()
        self._stats["kv_peak_positions"] = max(self._stats["kv_peak_positions"], mask.numel())
        tokens, logprobs = sample_next(
            out.logits[:, -1], [r.sampling for r in rows], [r.generator for r in rows], [r.suppress for r in rows]
        )
        return [(r, t, lp, self.version) for r, t, lp in zip(rows, tokens, logprobs)]

    def _positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Rotary positions (3, B, L) as the model takes them: all three for a VLM's multimodal rotary embedding,
        one row (B, L) for a text-only model."""
        return (positions[0] if self.vision.text_only else positions).to(self.device)

    def _reuse_prefix(self, req: _Request, runs: list[tuple[int, int]]) -> tuple[int, KV | None]:
        """The longest kept prefix of the prompt (its length, and its KV cropped to it).

        Content-addressed like vLLM's prefix cache: any kept entry may serve, the
        request's own key first on ties. Entries stay shared, no copy needed: a position
        a cache tensor holds is never written again (caches only append; see kv_cache).
        """
        if self.batch_invariant:
            return 0, None
        ids = torch.tensor(req.prompt_ids)
        limit = len(req.prompt_ids) - (1 if req.wants_logits else 0)  # logits need one token to run
        best, best_entry = 0, None
        own = self._prefixes.get(req.cache_key)
        kept = ([own] if own is not None else []) + list(reversed(self._prefixes.values()))
        for entry in self._running_prefixes(req.cache_key) + kept:
            # an entry whose first image is another stops matching where the prompt's first image starts
            bound = min(len(entry.ids), limit)
            if runs and entry.image_keys[:1] != req.image_keys[:1]:
                bound = min(bound, runs[0][0])
            if bound <= best:
                continue
            n = self._usable_prefix(entry, ids, limit, req.image_keys, runs)
            if n > best:
                best, best_entry = n, entry
        if best_entry is None:
            return 0, None
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in best_entry.kv]

    def _running_prefixes(self, key: str) -> list[_Prefix]:
        """The KV of the running requests of ``key``'s conversation (its first path part), as prefixes: a verifier
        streamed while its trajectory decodes reads the turn's KV instead of computing it again (vLLM's prefix
        cache shares a running request's full blocks the same way). Only KV computed at the current weights."""
        conversation = key.split("/")[0]
        out = []
        for i, row in enumerate(self._batch.rows):
            if row.id.split("/")[0] != conversation or row.kv_version != self.version:
                continue
            pad = int((self._batch.mask[i] == 0).sum())
            kv = [(k[i: i + 1, :, pad:], v[i: i + 1, :, pad:]) for k, v, *_ in self._batch.cache]
            out.append(_Prefix(torch.tensor(row.prompt_ids + row.out_ids), row.image_keys, kv, self.version))
        return out

    def _usable_prefix(
        self, entry: _Prefix, ids: torch.Tensor, limit: int, image_keys: list[str], runs: list[tuple[int, int]]
    ) -> int:
        """How many leading ``ids`` the entry covers without splitting or swapping an image."""
        if entry.version != self.version:
            return 0
        m = min(len(entry.ids), limit)
        differ = (entry.ids[:m] != ids[:m]).nonzero()
        n = int(differ[0]) if len(differ) else m
        for i, (s, e) in enumerate(runs):
            if s >= n:
                break
            same_image = i < len(entry.image_keys) and entry.image_keys[i] == image_keys[i]
            if e > n or not same_image:
                return s
        return n

    def _keep_prefix(self, key: str, ids: list[int], image_keys: list[str], kv: KV | None) -> None:
        if not kv or not ids or self.prefix_cache_tokens <= 0:
            return
        n_images = len(self.vision.pad_runs(ids))
        self._prefixes.pop(key, None)
        self._prefixes[key] = _Prefix(torch.tensor(ids), image_keys[:n_images], kv, self.version)
        total = sum(len(p.ids) for p in self._prefixes.values())
        while total > self.prefix_cache_tokens and self._prefixes:
            _, old = self._prefixes.popitem(last=False)
            total -= len(old.ids)


def _completion(req: _Request) -> Completion:
    return Completion(req.id, tuple(req.out_ids), tuple(req.out_logprobs), tuple(req.out_versions), req.finish)


def _image_key(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()
