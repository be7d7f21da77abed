"""Rollout engines behind one async protocol (``vlrl.engines.base.Engine``)."""

from __future__ import annotations

from vlrl.config import EngineConfig, ModelConfig
from vlrl.engines.base import Engine


async def make_engine(model: ModelConfig, engine: EngineConfig) -> Engine:
    """Start the engine ``engine.kind`` on ``model.path``; vLLM is imported only when asked for."""
    max_len = engine.max_model_len or None
    if engine.kind == "hf":
        from vlrl.engines.hf import HFEngine

        return HFEngine(
            model.path, dtype=model.dtype, device=engine.device, max_model_len=max_len,
            max_num_seqs=engine.max_num_seqs, prefix_cache_tokens=engine.prefix_cache_tokens,
            max_prefill_tokens=engine.max_prefill_tokens, min_pixels=model.min_pixels, max_pixels=model.max_pixels,
            kv_cache_gib=engine.kv_cache_gib, batch_invariant=engine.batch_invariant,
        )
    from vlrl.engines.vllm import VLLMEngine

    return await VLLMEngine.create(
        model.path, dtype=model.dtype, max_model_len=max_len, max_num_seqs=engine.max_num_seqs,
        gpu_memory_utilization=engine.gpu_memory_utilization, kv_cache_gib=engine.kv_cache_gib,
        enable_prefix_caching=engine.enable_prefix_caching, tensor_parallel_size=engine.tensor_parallel_size,
        max_images_per_prompt=engine.max_images_per_prompt, block_size=engine.block_size or None,
        min_pixels=model.min_pixels, max_pixels=model.max_pixels,
    )
