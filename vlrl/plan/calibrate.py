"""`vlrl plan calibrate`: this machine's costs, measured on the parts a run uses.

  decode   -- the HF engine decoding N requests together (N = 1, 8, 32, 64), end-of-sequence
              suppressed, at two answer lengths: the difference is N x T decode steps, so the
              prefill drops out; a line through (N, seconds per step) gives base + per request;
  prefill  -- the engine's prefill of fresh prompts of two lengths: seconds per token;
  tool     -- the sandboxed focus tool (`vlrl bench tools`' measurement): its median latency;
  update   -- short `vlrl train` runs (GRPO, the HF engine) at two answer caps: each step's
              perf/update_s against the tokens it trained (``lengths.jsonl``), a line through
              them; the weight sync is perf/sync_s;
each twice: with every core for everything (``colocated``), and with one torch thread for the
engine and one for the trainer (``disaggregated``: the split of `vlrl bench overlap`'s
disaggregated schedule, whose engine runs in a one-core Ray replica).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from vlrl.bench.tools import measure as tool_latency
from vlrl.config import EngineConfig, ModelConfig, TrainConfig, load_config
from vlrl.demo import bar_chart, question_prompt
from vlrl.engines import make_engine
from vlrl.plan.costs import Costs
from vlrl.recipes.train import train
from vlrl.types import SamplingParams
from vlrl.vision import VisionInputs

BATCHES, SHORT, LONG = (1, 8, 32, 64), 16, 80
TRAIN = [
    "env.tools=[vlrl.builtin.tools.focus:focus_on_x_values_with_draw]", "env.max_turns=2", "env.invalid_action=end",
    "task.name=synthetic_charts", "task.args={kinds: [v_bar], families: [largest], difficulty: starter}",
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.temperature=1.0", "optim.lr=1.0e-6",
    "steps=3", "log.progress=false", "log.transcripts_every=0", "log.plots_every=0", "checkpoint_every=0",
]


def line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope (both >= 0: a cost never shrinks with more work)."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    slope = max(slope, 0.0)
    return max(my - slope * mx, 0.0), slope


async def engine_costs(model_dir: Path) -> tuple[float, float, float]:
    """(decode base s, decode s per request, prefill s per token) of the HF engine on this process's threads."""
    engine = await make_engine(ModelConfig(str(model_dir)), EngineConfig(kind="hf", max_num_seqs=max(BATCHES)))
    try:
        tokenizer, vision = AutoTokenizer.from_pretrained(model_dir), VisionInputs(model_dir)
        chart = bar_chart([3.0, 7.0, 5.0])
        prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", chart)

        async def batch(n: int, tokens: int, tag: str) -> float:
            sampling = SamplingParams(max_tokens=tokens, temperature=1.0, suppress_token_ids=engine.eos_ids)
            began = time.perf_counter()
            await asyncio.gather(*(engine.complete(prompt, [chart], sampling, f"{tag}-{k}") for k in range(n)))
            return time.perf_counter() - began

        await batch(2, SHORT, "warm")
        steps = [(await batch(n, LONG, f"l{n}") - await batch(n, SHORT, f"s{n}")) / (LONG - SHORT) for n in BATCHES]
        base, per_request = line([float(n) for n in BATCHES], steps)
        fills = []
        for size in (256, 1024):
            ids = [40 + (k % 500) for k in range(size)]
            began = time.perf_counter()
            await engine.prefill(f"fill-{size}", ids, [])
            fills.append(time.perf_counter() - began)
        return base, per_request, max((fills[1] - fills[0]) / (1024 - 256), 0.0)
    finally:
        await engine.close()


def update_costs(model_dir: Path, overrides: list[str]) -> tuple[float, float, float]:
    """(update base s, update s per trained token, weight sync s) from short `vlrl train` runs."""
    tokens, seconds, syncs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for cap in (16, 128):
            cfg = load_config(TrainConfig, None, [*TRAIN, *overrides, f"model.path={model_dir}", f"log.dir={tmp}",
                                                  f"rollout.max_new_tokens={cap}", f"name=calibrate-{cap}"])
            run = asyncio.run(train(cfg))
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
            lengths = [json.loads(line) for line in (run / "lengths.jsonl").read_text().splitlines()][1:]
            for record, shapes in zip(metrics, lengths):
                tokens.append(float(sum(p + sum(turns) + o for p, turns, o in shapes["trajectories"])))
                seconds.append(record["perf/update_s"])
                syncs.append(record["perf/sync_s"])
    base, per_token = line(tokens, seconds)
    return base, per_token, statistics.median(syncs)


def calibrate(model_dir: Path) -> dict[str, Costs]:
    """This machine's costs for both placements (see the module docstring)."""
    tool_s = asyncio.run(tool_latency(40, 2))["p50_ms"] / 1000
    out = {}
    threads = torch.get_num_threads()
    stamp = time.strftime("%Y-%m-%d")
    for placement, n in (("colocated", threads), ("disaggregated", 1)):
        torch.set_num_threads(n)
        try:
            decode_base, per_request, prefill = asyncio.run(engine_costs(model_dir))
            update_base, per_token, sync = update_costs(model_dir, [f"distributed.trainer_threads={n}"])
        finally:
            torch.set_num_threads(threads)
        out[placement] = Costs(decode_base, per_request, prefill, tool_s, update_base, per_token, sync,
                               f"vlrl plan calibrate, {stamp}, {n} torch thread(s) of {threads}")
    return out
