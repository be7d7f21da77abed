"""Rollout engines behind one async protocol (``vlrl.engines.base.Engine``)."""

from __future__ import annotations

from vlrl.config import DistributedConfig, EngineConfig, ModelConfig
from vlrl.engines.base import Engine


async def open_engine(model: ModelConfig, engine: EngineConfig, distributed: DistributedConfig) -> Engine:
    """The engine a run samples from: one in this process, or (backend ray) ``engine.replicas`` Ray actors behind
    a router, on the cluster the caller has connected to (``vlrl.distributed.cluster.connect``)."""
    if distributed.backend == "none":
        return await make_engine(model, engine)
    from vlrl.distributed.router import ReplicaRouter

    return await ReplicaRouter.create(model, engine, distributed.placement_timeout_s)


async def make_engine(model: ModelConfig, engine: EngineConfig) -> Engine:
    """Start the engine ``engine.kind`` on ``model.path``; vLLM is imported only when asked for."""
    max_len = engine.max_model_len or None
    if engine.kind == "hf":
        from vlrl.engines.hf import HFEngine

        return HFEngine(
            model.path, dtype=model.dtype, device=engine.device, max_model_len=max_len,
            max_num_seqs=engine.max_num_seqs, prefix_cache_tokens=engine.prefix_cache_tokens,
        )
    from vlrl.engines.vllm import VLLMEngine

    return await VLLMEngine.create(
        model.path, dtype=model.dtype, max_model_len=max_len, max_num_seqs=engine.max_num_seqs,
        gpu_memory_utilization=engine.gpu_memory_utilization, kv_cache_gib=engine.kv_cache_gib,
        enable_prefix_caching=engine.enable_prefix_caching, tensor_parallel_size=engine.tensor_parallel_size,
        max_images_per_prompt=engine.max_images_per_prompt, block_size=engine.block_size or None,
    )
