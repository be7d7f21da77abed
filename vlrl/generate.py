"""`vlrl generate`: one question about one image, answered n times by either engine."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from transformers import AutoTokenizer

from vlrl.config import GenerateConfig
from vlrl.demo import bar_chart, question_prompt
from vlrl.engines import make_engine
from vlrl.types import Completion
from vlrl.vision import VisionInputs


def load_image(path: str) -> Image.Image:
    """An RGB image from ``path``, or ValueError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path!r}: {e}") from e


async def generate(cfg: GenerateConfig) -> list[Completion]:
    """Sample ``cfg.n`` answers and print them; returns the completions."""
    engine = await make_engine(cfg.model, cfg.engine)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        vision = VisionInputs(cfg.model.path)
        image = load_image(cfg.image) if cfg.image else bar_chart([3.0, 7.0, 5.0, 2.0])
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


def _nth(cfg: GenerateConfig, i: int):
    seed = None if cfg.sampling.seed is None else cfg.sampling.seed + i
    return dataclasses.replace(cfg.sampling, seed=seed)
