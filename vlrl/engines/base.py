"""The rollout engine protocol: token ids + images in, streamed token ids + logprobs out.

Both engines (HF and vLLM) implement it, and so does the router over Ray replicas of
either (``vlrl.distributed.router``); the rollout manager, the verifier and the benchmarks
only ever see this interface. Engines never tokenize or detokenize what the caller passes:
the ids given are the ids run, the ids returned are the ids sampled.

Request ids are paths whose first part names the conversation: a trajectory's turns
(``TRAJ/t0``, ``TRAJ/t1``, ...) and its verifier calls (``TRAJ/verify``) share it, and a
router keeps them on one replica so its cached prefix is reused.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from pathlib import Path
from typing import AsyncIterator, Iterable, Mapping, Sequence, TypeVar

import torch
from PIL import Image
from transformers import AutoConfig, GenerationConfig

from vlrl.types import Completion, Delta, NextTokenScores, SamplingParams

T = TypeVar("T")
NamedTensors = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


class PartLost(RuntimeError):
    """A part of a run that cannot be had back in place died (a trainer rank, the engine's process); ``checkpoint``
    is where the run resumes (None: its start)."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class EngineLost(PartLost):
    """The engine can serve no more: its own process died (what ``Engine.dead`` says)."""


class Engine(abc.ABC):
    """Async engine: many concurrent requests, each streamed as Deltas."""

    #: weight version the engine currently samples with (0 = as loaded)
    version: int
    #: token ids that end a sequence (the model's end-of-sequence ids)
    eos_ids: tuple[int, ...]

    @abc.abstractmethod
    def generate(
        self,
        prompt_ids: Sequence[int],
        images: Sequence[Image.Image],
        sampling: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[Delta]:
        """Stream the tokens sampled after ``prompt_ids``; the last Delta has a finish_reason.

        ``prompt_ids`` must already hold one full ``<|image_pad|>`` run per image, in order
        (see ``VisionInputs.expand``). To resume an aborted or paused request, call again
        with the prompt extended by what it generated: the engine reuses the cached prefix.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> Completion:
        """Stop a request; return everything it generated so far (finish_reason 'abort')."""

    @abc.abstractmethod
    async def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        """Load new weights in place (no restart) and sample with ``version`` from now on.

        Requests admitted afterwards use the new weights; cached prefixes computed under
        the old weights are dropped.
        """

    @abc.abstractmethod
    async def prefill(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        """Compute and keep the KV of ``prompt_ids`` under ``request_key``; return reused tokens.

        A later ``prefill`` or ``generate`` whose ids extend the same prefix reuses this
        work. The return value is the number of prompt tokens served from cache.
        """

    @abc.abstractmethod
    async def score_next(
        self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image], token_ids: Sequence[int]
    ) -> NextTokenScores:
        """Raw logprobs of each of ``token_ids`` as the token right after ``prompt_ids``.

        What a verifier asks ("Yes" or "No"?). The prompt's prefix is reused from cache as in
        ``prefill``, so a trajectory prefilled chunk by chunk is only finished here.
        """

    @abc.abstractmethod
    async def reset_prefix_cache(self) -> None:
        """Drop every cached prefix, so the next requests compute from scratch (cold-start measurements)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Abort every request and release the engine's resources."""

    def dead(self) -> str | None:
        """Why the engine can serve no more (a process of its own died), or None while it can."""
        return None

    def take_stats(self) -> dict[str, float]:
        """Figures counted since the last call, for the step's metrics (a router: requests per replica, failovers)."""
        return {}

    async def complete(
        self,
        prompt_ids: Sequence[int],
        images: Sequence[Image.Image],
        sampling: SamplingParams,
        request_id: str,
    ) -> Completion:
        """Run ``generate`` to the end and collect it."""
        return await collect(request_id, self.generate(prompt_ids, images, sampling, request_id))


async def collect(request_id: str, stream: AsyncIterator[Delta]) -> Completion:
    """Concatenate a delta stream into one Completion."""
    ids: list[int] = []
    logprobs: list[float] = []
    versions: list[int] = []
    finish = None
    cached = 0
    async for delta in stream:
        cached = cached or delta.cached_tokens
        ids.extend(delta.token_ids)
        logprobs.extend(delta.logprobs)
        versions.extend([delta.version] * len(delta.token_ids))
        finish = delta.finish_reason or finish
    return Completion(request_id, tuple(ids), tuple(logprobs), tuple(versions), finish, cached)


def check_model_dir(path: str | Path) -> Path:
    """The model folder as a Path, or FileNotFoundError naming it."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model folder {str(p)!r} does not exist or has no config.json")
    return p


def remember(recent: "OrderedDict[str, T]", key: str, value: T, limit: int = 1024) -> None:
    """Keep ``value`` among the ``limit`` most recently ended requests (for late aborts)."""
    recent[key] = value
    recent.move_to_end(key)
    while len(recent) > limit:
        recent.popitem(last=False)


def model_eos_ids(model_dir: Path) -> tuple[int, ...]:
    """End-of-sequence ids: the generation config's, else the text config's."""
    eos = None
    if (model_dir / "generation_config.json").exists():
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    if eos is None:
        eos = AutoConfig.from_pretrained(model_dir).get_text_config().eos_token_id
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def check_token_ids(token_ids: Sequence[int], vocab_size: int, request_key: str) -> list[int]:
    """Token ids to score, as a list; raises ValueError unless there is at least one and all are in the vocabulary."""
    ids = [int(t) for t in token_ids]
    if not ids:
        raise ValueError(f"request {request_key!r}: no token ids to score")
    _check_vocab(ids, vocab_size, f"request {request_key!r}: token id to score")
    return ids


def check_prompt(prompt_ids: Sequence[int], vocab_size: int, max_model_len: int, request_id: str) -> list[int]:
    """Validated prompt ids as a list; raises ValueError naming the offending value."""
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError(f"request {request_id!r}: empty prompt")
    if len(ids) >= max_model_len:
        raise ValueError(
            f"request {request_id!r}: prompt of {len(ids)} tokens does not fit the model's context of "
            f"{max_model_len} tokens (max_model_len)"
        )
    _check_vocab(ids, vocab_size, f"request {request_id!r}: token id")
    return ids


def _check_vocab(ids: Sequence[int], vocab_size: int, what: str) -> None:
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(f"{what} {bad} is outside the vocabulary [0, {vocab_size})")
