"""Verifiers on a model folder of their own: `vlrl train`'s ``verifier.model`` and `vlrl eval`'s ``judge.external``.

Both mean the same thing: a VLM (or a reward-model folder, read by its scalar head) that
shares the policy's tokenizer, run on an engine of its own kind and placement, and fed the
policy's trajectories with their image runs resized to its own image processor.
"""

from __future__ import annotations

from typing import Any

from vlrl.config import DistributedConfig, EngineConfig, ModelConfig, QuestionConfig
from vlrl.distributed import open_engine
from vlrl.engines.base import Engine
from vlrl.rewards.head import read_reward_head
from vlrl.rewards.verifier import Verifier, check_same_tokenizer, resized_image_runs
from vlrl.vision import VisionInputs


async def open_model_verifier(path: str, key: str, asked: QuestionConfig, policy: ModelConfig, tokenizer: Any,
                              engine: EngineConfig, distributed: DistributedConfig) -> tuple[Verifier, Engine]:
    """The verifier on the model folder ``path`` (the setting ``key`` names it, for errors) asked ``asked``, and its
    engine, which the caller closes."""
    check_same_tokenizer(path, tokenizer, key)
    head = read_reward_head(path)
    own = await open_engine(ModelConfig(path, policy.dtype, min_pixels=asked.min_pixels, max_pixels=asked.max_pixels),
                            engine, distributed)
    image_runs = resized_image_runs(VisionInputs(policy.path, policy.min_pixels, policy.max_pixels),
                                    VisionInputs(path, asked.min_pixels, asked.max_pixels))
    return Verifier(own, tokenizer, asked.question, asked.yes, asked.no, image_runs, head), own
