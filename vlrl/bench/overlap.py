"""`vlrl bench overlap`: the synchronous pipeline against intra-step, inter-step and both overlaps.

The workload, ``longtail-charts``, reproducible from its seed:
  policy   -- the tiny VLM built locally, warm-started once (80 supervised steps of 16) on the
              quickstart's teacher, which calls the focus tool 80% of the time and opens 15%
              of its answers with a THOUGHT of 1-40 sentences (about 6-240 tokens, uniform):
              the model's answers are mostly short, with a tail up to the 256-token cap;
  tools    -- focus_on_x_values_with_draw in the sandbox, with its real latency;
  verifier -- the policy itself, asked whether the answer is right (P(Yes) weighs 0.5 in the
              reward), on the same engine;
  batch    -- 8 prompt groups of 4 per step; the HF engine decodes up to 32 requests together;
  update   -- a GRPO step at a learning rate of 1e-6: the full update runs, but the policy
              (and so the length distribution) stays as warm-started over the measured
              steps, so every schedule faces the same work.
The schedules, all from the same weights and seed:
  sync        -- generate everything, then score everything with the verifier, then train;
  intra       -- each trajectory streams to the verifier every 32 tokens while decoding;
  inter       -- 4 groups beyond the batch in flight; the batch closes at 8 whole groups, the
                 rest is paused and carried over (at most 1 step); the verifier reads each
                 trajectory when it ends;
  intra+inter -- both.
Step time is the mean over the steps after the first (a warm-up), split into the rollout
(generation and reward, what the schedules change) and the update (logprob forward,
backward, AdamW and weight sync, the same work under every schedule, during which nothing
decodes). The bound is sync's step over its update alone: the speedup a schedule would
reach if it hid the whole rollout. The ideal step time
puts every trained policy token through the engine at its peak throughput (measured here:
32 requests x 128 tokens, end-of-sequence suppressed); efficiency is ideal / measured.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from vlrl.config import EngineConfig, ModelConfig, TrainConfig, load_config
from vlrl.demo import bar_chart, question_prompt
from vlrl.engines import make_engine
from vlrl.recipes.train import train
from vlrl.types import SamplingParams
from vlrl.vision import VisionInputs

GROUPS, GROUP_SIZE, EXTRA, CHUNK = 8, 4, 4, 32
TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "templates" / "compact"  # the quickstart's prompts
WORKLOAD = [
    "env.tools=[vlrl.builtin.tools.focus:focus_on_x_values_with_draw]", "env.max_turns=2", "env.invalid_action=end",
    f"env.templates={TEMPLATES}", "env.sandbox.workers=2",
    "task.name=synthetic_charts",
    "task.args={kinds: [v_bar], families: [largest], difficulty: starter, labels: letters, workers: 2}",
    f"rollout.prompts_per_step={GROUPS}", f"rollout.group_size={GROUP_SIZE}", "rollout.max_new_tokens=256",
    "rollout.temperature=1.0", "algo.loss.kl_coef=0.0", "optim.lr=1.0e-6", "optim.micro_batch_tokens=16384",
    "engine.kind=hf", f"engine.max_num_seqs={GROUPS * GROUP_SIZE}",
    "verifier.model=policy", "verifier.weight=0.5",
    "log.progress=false", "log.transcripts_every=0", "log.plots_every=0",
]
TEACHER = ("warmstart.agent=teacher", "warmstart.agent_args={p_tool: 0.8, p_correct: 0.5, brief: true, "
           "confusion: neighbor, p_verbose: 0.15, verbose_lines: 40}", "warmstart.samples=768",
           "warmstart.steps=80", "warmstart.batch_size=16", "warmstart.lr=1.0e-3")
SCHEDULES = {
    "sync": ["rollout.schedule=sync"],
    "intra": ["rollout.schedule=async", f"verifier.chunk_tokens={CHUNK}"],
    "inter": ["rollout.schedule=overlap", f"rollout.extra_groups={EXTRA}", "verifier.chunk_tokens=0"],
    "intra+inter": ["rollout.schedule=overlap", f"rollout.extra_groups={EXTRA}", f"verifier.chunk_tokens={CHUNK}"],
}
PEAK_REQUESTS, PEAK_TOKENS = GROUPS * GROUP_SIZE, 128


def warm_start(model_dir: Path, root: Path) -> Path:
    """The workload's policy: the tiny model after the teacher's warm start (and one RL step)."""
    cfg = load_config(TrainConfig, None, [*WORKLOAD, *TEACHER, f"model.path={model_dir}", f"log.dir={root}",
                                          "name=warmstart", "steps=1", "verifier.model="])
    run = asyncio.run(train(cfg))
    return run / "checkpoints" / "step-1" / "model"


async def peak_tokens_per_s(model_dir: Path) -> float:
    """Generated tokens/s with the engine's batch full (every request runs to ``PEAK_TOKENS``)."""
    engine = await make_engine(ModelConfig(str(model_dir)), EngineConfig(kind="hf", max_num_seqs=PEAK_REQUESTS))
    try:
        tokenizer, vision = AutoTokenizer.from_pretrained(model_dir), VisionInputs(model_dir)
        chart = bar_chart([3.0, 7.0, 5.0])
        prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", chart)
        sampling = SamplingParams(max_tokens=PEAK_TOKENS, temperature=1.0, suppress_token_ids=engine.eos_ids)
        await engine.complete(prompt, [chart], sampling, "peak-warmup")
        start = time.perf_counter()
        outs = await asyncio.gather(*(engine.complete(prompt, [chart], sampling, f"peak-{k}")
                                      for k in range(PEAK_REQUESTS)))
        return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)
    finally:
        await engine.close()


def measure(policy: Path, schedule: str, steps: int, root: Path) -> dict[str, float]:
    """Run ``schedule`` for ``steps`` (+1 warm-up) and average its metrics over the measured steps."""
    cfg = load_config(TrainConfig, None, [*WORKLOAD, *SCHEDULES[schedule], f"model.path={policy}",
                                          f"log.dir={root}", f"name={schedule.replace('+', '-')}",
                                          f"steps={steps + 1}", "log.timeline=3"])
    run = asyncio.run(train(cfg))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    staleness = [(int(k), n) for r in records for k, n in (r.get("sched/staleness") or {"0": 1}).items()]
    tokens = [r["rollout/response_length"] * r["rollout/trajectories"] for r in records]
    return {
        "step_s": statistics.mean(r["perf/step_s"] for r in records),
        "rollout_s": statistics.mean(r["perf/rollout_s"] + r["perf/reward_s"] for r in records),
        "update_s": statistics.mean(r["perf/update_s"] + r["perf/sync_s"] for r in records),
        "busy": statistics.mean(r["perf/engine_busy_fraction"] for r in records),
        "bubble": statistics.mean(r["perf/bubble_ratio"] for r in records),
        "tokens_per_s": sum(tokens) / sum(r["perf/step_s"] for r in records),
        "tokens_per_step": statistics.mean(tokens),
        "deferred": statistics.mean(r["sched/deferred_fraction"] for r in records),
        "staleness": sum(k * n for k, n in staleness) / sum(n for _, n in staleness),
        "reward": statistics.mean(r["reward/mean"] for r in records),
        "response_length": statistics.mean(r["rollout/response_length"] for r in records),
        "length_cap_rate": sum(r["rollout/finish"].get("length", 0) for r in records) / sum(
            r["rollout/trajectories"] for r in records),
        "finished_length": statistics.mean(r["sched/response_length_finished"] or r["rollout/response_length"]
                                           for r in records),
        "dropped": sum(r["rollout/dropped"].get("staleness", 0) for r in records) / sum(
            r["rollout/trajectories"] + r["rollout/dropped"].get("staleness", 0) for r in records),
        "hidden": statistics.mean(r.get("verifier/hidden_fraction", 0.0) for r in records),
    }


def run(model_dir: Path, steps: int, as_json: bool, keep: Path | None = None) -> dict[str, float]:
    """Every schedule on the workload for ``steps`` measured steps; prints the table, and the JSON line
    with ``as_json``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        policy = warm_start(model_dir, root)
        peak = asyncio.run(peak_tokens_per_s(policy))
        results = {name: measure(policy, name, steps, root) for name in SCHEDULES}
        if keep is not None:
            shutil.copytree(root, keep, dirs_exist_ok=True)
    _print_table(results, peak, steps)
    base, update = results["sync"]["step_s"], results["sync"]["update_s"]
    if update <= 0:
        raise RuntimeError(f"sync trained no group in its {steps} measured step(s): no update time to bound by")
    print(f"bound: sync's update alone takes {update:.2f} s of its {base:.2f} s step, so a schedule that hid the "
          f"whole rollout would reach {base / update:.2f}x")
    figures = {"speedup_intra_inter": base / results["intra+inter"]["step_s"],
               "speedup_inter": base / results["inter"]["step_s"],
               "speedup_intra": base / results["intra"]["step_s"],
               "bubble_sync": results["sync"]["bubble"], "bubble_overlap": results["intra+inter"]["bubble"],
               "reward_sync": results["sync"]["reward"], "reward_overlap": results["intra+inter"]["reward"],
               "verifier_hidden_intra": results["intra"]["hidden"], "speedup_bound": base / update,
               "peak_tokens_per_s": peak}
    figures = {k: round(v, 3) for k, v in figures.items()}
    if as_json:
        print(json.dumps(figures))
    return figures


def _print_table(results: dict[str, dict[str, float]], peak: float, steps: int) -> None:
    base = results["sync"]["step_s"]
    print(f"workload longtail-charts: {GROUPS} groups x {GROUP_SIZE}, mean of {steps} steps after 1 warm-up; "
          f"engine peak {peak:.0f} tokens/s")
    header = ("schedule    | step s | rollout s | update s | speedup | busy | bubble | tok/s | deferred | staleness | "
              "reward | trained / finished len | at cap | stale-dropped | verifier hidden | ideal s | efficiency")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        ideal = r["tokens_per_step"] / peak
        print(f"{name:11} | {r['step_s']:6.2f} | {r['rollout_s']:9.2f} | {r['update_s']:8.2f} | "
              f"{base / r['step_s']:6.2f}x | {r['busy']:4.2f} | {r['bubble']:6.2f} | "
              f"{r['tokens_per_s']:5.0f} | {r['deferred']:8.2f} | {r['staleness']:9.2f} | {r['reward']:6.3f} | "
              f"{r['response_length']:10.1f} / {r['finished_length']:8.1f} | {r['length_cap_rate']:6.2f} | "
              f"{r['dropped']:13.2f} | {r['hidden']:15.2f} | {ideal:7.2f} | "
              f"{ideal / r['step_s']:10.2f}")
