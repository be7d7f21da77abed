"""`vlrl generate`: one question about one image, answered n times by either engine."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vlrl.commands import config_command
from vlrl.config import GenerateConfig, load_config

if TYPE_CHECKING:
    from vlrl.types import Completion, SamplingParams


def add_to(sub: argparse._SubParsersAction) -> None:
    config_command(sub, "generate", "answer one question about one image with an engine", "configs/generate.yaml",
                   "engine.kind=vllm sampling.temperature=0", run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(GenerateConfig, args.config, args.overrides)  # before torch is imported: errors come fast
    asyncio.run(generate(cfg))
    return 0


async def generate(cfg: GenerateConfig) -> list[Completion]:
    """Sample ``cfg.n`` answers and print them; returns the completions."""
    from transformers import AutoTokenizer

    from vlrl.demo import bar_chart, question_prompt
    from vlrl.engines import make_engine
    from vlrl.vision import VisionInputs, read_image

    engine = await make_engine(cfg.model, cfg.engine)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        vision = VisionInputs(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
        image = read_image(cfg.image) if cfg.image else bar_chart([3.0, 7.0, 5.0, 2.0])
        prompt = question_prompt(tokenizer, vision, cfg.question, image)
        start = time.perf_counter()
        completions = await asyncio.gather(*[
            engine.complete(prompt, [image], _nth(cfg, i), f"generate-{i}") for i in range(cfg.n)
        ])
        elapsed = time.perf_counter() - start
    finally:
        await engine.close()
    print(f"[{cfg.engine.kind}] {Path(cfg.model.path).name}: {len(prompt)} prompt tokens, question {cfg.question!r}")
    for i, c in enumerate(completions):
        text = tokenizer.decode(c.token_ids, skip_special_tokens=False)
        mean_lp = sum(c.logprobs) / max(len(c.logprobs), 1)
        print(f"  sample {i}: {len(c.token_ids)} tokens, finish={c.finish_reason}, mean logprob {mean_lp:.3f}")
        print(f"    {text!r}")
    total = sum(len(c.token_ids) for c in completions)
    print(f"[{cfg.engine.kind}] {total} tokens in {elapsed:.2f} s ({total / elapsed:.0f} tokens/s)")
    return list(completions)


def _nth(cfg: GenerateConfig, i: int) -> SamplingParams:
    seed = None if cfg.sampling.seed is None else cfg.sampling.seed + i
    return dataclasses.replace(cfg.sampling, seed=seed)
