"""Models that score the policy's answers, opened from the config: verifiers on a folder of their own (`vlrl
train`'s ``verifier.model`` and `vlrl eval`'s ``judge.external``), and the reward judge (``reward_judge``).

A verifier folder is a VLM (or a reward-model folder, read by its scalar head) that shares
the policy's tokenizer, run on an engine of its own kind and placement, and fed the policy's
trajectories with their image runs resized to its own image processor. A reward judge reads
only text (question, ground truth, answer) through its own tokenizer and chat template.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from transformers import AutoTokenizer

from vlrl.answer import extract_answer, has_final_answer
from vlrl.config import DistributedConfig, EngineConfig, ModelConfig, QuestionConfig, RewardJudgeConfig
from vlrl.distributed import open_engine
from vlrl.engines.base import Engine, check_model_dir
from vlrl.rewards.head import read_reward_head
from vlrl.rewards.judge import AnswerJudge
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


async def open_reward_judge(cfg: RewardJudgeConfig, policy_engine: Engine | None, tokenizer: Any, policy: ModelConfig,
                            engine: EngineConfig, distributed: DistributedConfig) -> tuple[AnswerJudge | None,
                                                                                          Engine | None]:
    """The reward judge ``cfg`` asks for, and the engine started for it (None when it is the policy's, or none)."""
    if not cfg.model:
        return None, None
    if cfg.model == "policy":
        if policy_engine is None:
            raise ValueError("reward_judge.model 'policy' needs a policy; name a model folder")
        return AnswerJudge(policy_engine, tokenizer, cfg), None
    path = str(check_model_dir(cfg.model))
    own = await open_engine(ModelConfig(path, policy.dtype), engine, distributed)
    try:
        return AnswerJudge(own, AutoTokenizer.from_pretrained(path), cfg), own
    except BaseException:
        await own.close()
        raise


JUDGED_AT_ONCE = 256  # rows whose judge requests are in flight together (the engine batches them)


async def judge_rows(cfg: RewardJudgeConfig, engine: EngineConfig,
                     rows: Sequence[tuple[str, str, Sequence[str]]]) -> list[tuple[float, str]]:
    """(score, verdict) of each (question, prediction, accepted answers) by the judge ``cfg`` names, on an engine
    of its own (`vlrl data score --judge`). A bare prediction (no ``FINAL ANSWER:``) is judged as the answer it
    states."""
    judge, own = await open_reward_judge(cfg, None, None, ModelConfig(cfg.model), engine, DistributedConfig())
    assert judge is not None and own is not None
    out: list[tuple[float, str]] = []
    try:
        for at in range(0, len(rows), JUDGED_AT_ONCE):
            done = await asyncio.gather(*(
                judge.judge(f"row-{at + k}", question, answers,
                            text if has_final_answer(text) else f"FINAL ANSWER: {extract_answer(text)}")
                for k, (question, text, answers) in enumerate(rows[at: at + JUDGED_AT_ONCE])))
            out += [(j.score, j.verdict) for j in done]
    finally:
        await own.close()
    return out
