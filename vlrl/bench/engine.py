"""`vlrl bench engine`: throughput, start time, memory and logprob parity of each engine.

Throughput: requests of one image and a question, 64 new tokens each (end-of-sequence
suppressed so every request runs the full 64), at 1, 8 and 32 concurrent requests (or
``--concurrency``; at c requests a decode step makes c tokens, so c / tokens/s is a step);
tokens/s counts generated tokens over wall time. Parity: two-turn, two-image
trajectories (256 generated tokens each) scored by a separately loaded trainer model.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Sequence

import psutil
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from vlrl.bench.parity import logprob_parity, two_turn_rollout
from vlrl.config import EngineConfig, ModelConfig
from vlrl.demo import bar_chart, question_prompt
from vlrl.engines import make_engine
from vlrl.types import SamplingParams
from vlrl.vision import VisionInputs

CONCURRENCY = (1, 8, 32)
NEW_TOKENS = 64


def resident_mib() -> float:
    """RSS of this process and its children (vLLM's engine core and workers), in MiB."""
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


async def bench_one(kind: str, model_dir: Path, quick: bool, concurrency: Sequence[int] = CONCURRENCY,
                    device: str = "cpu", dtype: str = "float32") -> dict:
    """Figures for one engine kind; the engine (hf) and the trainer's model on ``device`` in ``dtype``."""
    base_rss = resident_mib()
    t0 = time.perf_counter()
    engine = await make_engine(ModelConfig(path=str(model_dir), dtype=dtype),  # type: ignore[arg-type]
                               EngineConfig(kind=kind, device=device))  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vision = VisionInputs(model_dir)
    chart = bar_chart([3.0, 7.0, 5.0, 2.0])
    prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", chart)
    sampling = SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0, suppress_token_ids=engine.eos_ids)
    await engine.complete(prompt, [chart], sampling, f"{kind}-warmup")
    start_s = time.perf_counter() - t0
    reps = 1 if quick else 3
    throughput = {}
    for c in concurrency:
        rates = []
        for r in range(reps):
            t = time.perf_counter()
            outs = await asyncio.gather(*[
                engine.complete(prompt, [chart], sampling, f"{kind}-c{c}-r{r}-{i}") for i in range(c)
            ])
            rates.append(sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t))
        throughput[c] = statistics.median(rates)
    rss = resident_mib() - base_rss
    trajectories = [
        await two_turn_rollout(engine, tokenizer, vision, f"{kind}-parity-{i}", seed=i) for i in range(1 if quick else 4)
    ]
    await engine.close()
    trainer = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    parity = logprob_parity(trainer, vision, trajectories)
    return {"start_s": start_s, "tokens_per_s": throughput, "rss_mib": rss,
            "parity_mean_abs": parity.mean_abs, "parity_max_abs": parity.max_abs, "parity_tokens": parity.tokens}


def run(model_dir: Path, engines: list[str], quick: bool, as_json: bool,
        concurrency: Sequence[int] = CONCURRENCY, device: str = "cpu", dtype: str = "float32") -> dict:
    results = {kind: asyncio.run(bench_one(kind, model_dir, quick, concurrency, device, dtype)) for kind in engines}
    print(f"engines and trainer on {device} in {dtype}")
    header = "engine | start s | " + " | ".join(f"tok/s @{c}" for c in concurrency) + " | RSS MiB | parity mean / max |Δ|"
    print(header)
    print("-" * len(header))
    for kind, r in results.items():
        rates = " | ".join(f"{r['tokens_per_s'][c]:9.0f}" for c in concurrency)
        print(f"{kind:6} | {r['start_s']:7.1f} | {rates} | {r['rss_mib']:7.0f} | "
              f"{r['parity_mean_abs']:.1e} / {r['parity_max_abs']:.1e} ({r['parity_tokens']} tokens)")
    summary: dict = {"device": device, "dtype": dtype}
    for kind, r in results.items():
        summary[f"{kind}_tokens_per_s"] = {str(c): round(v, 1) for c, v in r["tokens_per_s"].items()}
        summary[f"parity_{kind}_mean_abs"] = r["parity_mean_abs"]
        summary[f"parity_{kind}_max_abs"] = r["parity_max_abs"]
        summary[f"{kind}_start_s"] = round(r["start_s"], 2)
        summary[f"{kind}_rss_mib"] = round(r["rss_mib"], 1)
    if as_json:
        print(json.dumps(summary))
    return summary
