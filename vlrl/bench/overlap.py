"""`vlrl bench overlap`: the synchronous pipeline against every overlap schedule, on a long-tail workload.

Two workloads, reproducible from their seed; both share:
  policy   -- the tiny VLM built locally, warm-started once (80 supervised steps of 16) on the
              quickstart's teacher, which calls the focus tool 80% of the time and opens its
              answers with a THOUGHT (sentences of about 12 tokens) as the workload says;
  tools    -- focus_on_x_values_with_draw in the sandbox, with its real latency;
  verifier -- the policy itself, asked whether the answer is right (P(Yes) weighs 0.5 in the
              reward), on the same engine;
  batch    -- 8 prompt groups of 4 per step; the engine's batch holds every request a schedule has in
              flight (32 for sync, 48 with 4 extra groups, 64 with 8), the unit of its bubble ratio;
  update   -- a GRPO step at a learning rate of 1e-6: the full update runs, but the policy
              (and so the length distribution) stays as warm-started over the measured
              steps, so every schedule faces the same work.
The workloads (``WORKLOADS``):
  longtail-charts -- 15% of answers open with a THOUGHT of 1-40 sentences (uniform), a 256-token
                     cap: mostly ~15-token answers, and the update is most of the step;
  longtail-cot    -- every answer opens with a chain of thought whose length in sentences is
                     lognormal (median 4, log-scale sigma 1.8, at most 80): the heavy right tail
                     of RL response lengths (a lognormal is the usual fit of LLM output lengths;
                     5% of the teacher's answers reach 80 sentences, so 4 steps in 5 hold one),
                     a 1,024-token cap (cap / median about 17; RL runs cap at 8-16k tokens over
                     answers of a few hundred): the rollout is most of the step. (Sigma was 1.5
                     until the HF engine's decode got cheaper on long batches; the rollout
                     then fell to 59% of sync's step.)
The schedules, all from the same weights and seed:
  sync          -- generate everything, then score everything with the verifier, then train;
  intra         -- each trajectory streams to the verifier every 32 tokens while decoding;
  inter         -- 4 groups beyond the batch in flight; the batch closes at 8 whole groups, the
                   rest is paused through the update and resumed (never dropped); the verifier
                   reads each trajectory when it ends;
  intra+inter   -- both;
  sync-split    -- sync with the engine in a Ray replica of one core and the trainer on the other
                   (the resources of disaggregated, the schedule of sync);
  disaggregated -- intra+inter with 8 extra groups (a whole batch decodes ahead) and the engine in a
                   Ray replica of one core, decoding through the update, the trainer on the other.
Step time is the mean over the steps after the first (a warm-up), split into the rollout
(generation and reward, until the batch closes) and the update (logprob forward, backward,
AdamW and weight sync, during which only disaggregated decodes). The bound is sync's step
over its update alone: the speedup a schedule would reach if it hid the whole rollout
(disaggregated, whose update runs on one core, is not bound by it). The ideal step time
puts every trained policy token through the engine at its peak throughput (measured here:
64 requests x 128 tokens, end-of-sequence suppressed); efficiency is ideal / measured.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from vlrl.config import EngineConfig, ModelConfig, TrainConfig, load_config
from vlrl.demo import bar_chart, question_prompt
from vlrl.engines import make_engine
from vlrl.recipes.train import train
from vlrl.runlog import read_log
from vlrl.types import SamplingParams
from vlrl.vision import VisionInputs

GROUPS, GROUP_SIZE, EXTRA, CHUNK = 8, 4, 4, 32
AHEAD = GROUPS  # disaggregated: a whole batch decodes ahead while the trainer updates (staleness mostly <= 1)
TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "templates" / "compact"  # the quickstart's prompts


@dataclass(frozen=True)
class Workload:
    """What the policy was warm-started to write, and the answer's token cap."""

    teacher: str  # the teacher's agent_args (YAML)
    max_new_tokens: int


WORKLOADS = {
    "longtail-charts": Workload("{p_tool: 0.8, p_correct: 0.5, brief: true, confusion: neighbor, p_verbose: 0.15, "
                                "verbose_lines: 40}", 256),
    "longtail-cot": Workload("{p_tool: 0.8, p_correct: 0.5, brief: true, confusion: neighbor, cot_median: 4, "
                             "cot_sigma: 1.8, cot_cap: 80}", 1024),
}
COMMON = [
    "env.tools=[vlrl.builtin.tools.focus:focus_on_x_values_with_draw]", "env.max_turns=2", "env.invalid_action=end",
    f"env.templates={TEMPLATES}", "env.sandbox.workers=2",
    "task.name=synthetic_charts",
    "task.args={kinds: [v_bar], families: [largest], difficulty: starter, labels: letters, workers: 2}",
    f"rollout.prompts_per_step={GROUPS}", f"rollout.group_size={GROUP_SIZE}",
    "rollout.temperature=1.0", "algo.loss.kl_coef=0.0", "optim.lr=1.0e-6", "optim.micro_batch_tokens=16384",
    "engine.kind=hf",
    "verifier.model=policy", "verifier.weight=0.5",
    "log.progress=false", "log.transcripts_every=0", "log.plots_every=0",
]
TEACHER = ("warmstart.agent=teacher", "warmstart.samples=768", "warmstart.steps=80", "warmstart.batch_size=16",
           "warmstart.lr=1.0e-3")

def flight(extra: int) -> list[str]:
    """B + ``extra`` groups in flight, and an engine whose batch holds them all (its slots are the bubble's unit)."""
    schedule = "rollout.schedule=overlap" if extra else "rollout.schedule=sync"
    return [schedule, f"rollout.extra_groups={extra}", f"engine.max_num_seqs={(GROUPS + extra) * GROUP_SIZE}"]


SPLIT = ["distributed.backend=ray", "engine.replicas=1", "engine.replica_resources={CPU: 1}",
         "distributed.trainer_threads=1"]  # the engine on one core (Ray's actor: 1 thread), the trainer on the other
SCHEDULES = {
    "sync": flight(0),
    "intra": [*flight(0), "rollout.schedule=async", f"verifier.chunk_tokens={CHUNK}"],
    "inter": [*flight(EXTRA), "verifier.chunk_tokens=0"],
    "intra+inter": [*flight(EXTRA), f"verifier.chunk_tokens={CHUNK}"],
    "sync-split": [*flight(0), *SPLIT],
    "disaggregated": [*flight(AHEAD), f"verifier.chunk_tokens={CHUNK}", "rollout.decode_during_update=true", *SPLIT],
}
PEAK_REQUESTS, PEAK_TOKENS = (GROUPS + AHEAD) * GROUP_SIZE, 128


DEVICES = {  # where the model runs, and what the split schedules give the engine's replica there
    "cpu": ([], []),
    "cuda": (["model.device=cuda", "engine.device=cuda"], ["engine.replica_resources={GPU: 0.5, CPU: 1}"]),
}


def workload_overrides(name: str, device: str = "cpu") -> list[str]:
    """The config of workload ``name`` (a key of ``WORKLOADS``) on ``device`` under every schedule."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    return [*COMMON, f"rollout.max_new_tokens={WORKLOADS[name].max_new_tokens}", *DEVICES[device][0]]


def schedule_overrides(schedule: str, device: str) -> list[str]:
    """``schedule``'s settings; a split schedule's replica gets the device's share (on a GPU: half the card)."""
    split = schedule in ("sync-split", "disaggregated") and device != "cpu"
    return [*SCHEDULES[schedule], *(DEVICES[device][1] if split else [])]


def warm_start(model_dir: Path, workload: str, root: Path, device: str = "cpu") -> Path:
    """The workload's policy: the tiny model after the teacher's warm start (and one RL step)."""
    cfg = load_config(TrainConfig, None, [*workload_overrides(workload, device), *TEACHER,
                                          f"warmstart.agent_args={WORKLOADS[workload].teacher}",
                                          f"model.path={model_dir}", f"log.dir={root}", "name=warmstart", "steps=1",
                                          "verifier.model="])
    run = asyncio.run(train(cfg))
    return run / "checkpoints" / "step-1" / "model"


async def peak_tokens_per_s(model_dir: Path, device: str = "cpu") -> float:
    """Generated tokens/s with the engine's batch full (every request runs to ``PEAK_TOKENS``)."""
    engine = await make_engine(ModelConfig(str(model_dir)), EngineConfig(kind="hf", max_num_seqs=PEAK_REQUESTS,
                                                                          device=device))
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


def measure(policy: Path, workload: str, schedule: str, steps: int, root: Path, device: str = "cpu",
            round_: int = 1) -> dict[str, float]:
    """Run ``schedule`` for ``steps`` (+1 warm-up) and average its metrics over the measured steps."""
    cfg = load_config(TrainConfig, None, [*workload_overrides(workload, device), *schedule_overrides(schedule, device),
                                          f"model.path={policy}",
                                          f"log.dir={root}", f"name={run_name(schedule, round_)}",
                                          f"steps={steps + 1}", "log.timeline=3"])
    run = asyncio.run(train(cfg))
    records = read_log(run)[1:]
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
        "median_length": statistics.mean(r["rollout/response_length_median"] for r in records),
        "max_length": max(r["rollout/response_length_max"] for r in records),
        # the engine's seconds per decode forward: under schedules that decode the same trajectories (sync, intra,
        # sync-split's one thread aside), a difference is the machine's speed moving during the benchmark
        "decode_ms": 1000 * sum(r.get("engine/decode_s", 0.0) for r in records) / max(
            sum(r.get("engine/decode_steps", 0.0) for r in records), 1.0),
    }


def run(model_dir: Path, workload: str, steps: int, as_json: bool, keep: Path | None = None,
        schedules: tuple[str, ...] = tuple(SCHEDULES), device: str = "cpu", rounds: int = 1) -> dict[str, Any]:
    """``schedules`` (sync first) on ``workload`` for ``steps`` measured steps each, ``rounds`` times over (every
    schedule once a round: a speedup is over the same round's sync, which ran minutes before it, not hours); prints
    the table, and the JSON line with ``as_json``."""
    if steps < 1 or rounds < 1:
        raise ValueError(f"steps and rounds must be >= 1, got {steps} and {rounds}")
    unknown = [name for name in schedules if name not in SCHEDULES]
    if unknown or not schedules or schedules[0] != "sync":
        raise ValueError(f"schedules must start with sync and come from {', '.join(SCHEDULES)}; got {schedules}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device on this machine")
    load_config(TrainConfig, None, [*workload_overrides(workload, device), f"model.path={model_dir}"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        policy = warm_start(model_dir, workload, root, device)
        peak = asyncio.run(peak_tokens_per_s(policy, device))
        measured = [{name: measure(policy, workload, name, steps, root, device, k) for name in schedules}
                    for k in range(1, rounds + 1)]
        if keep is not None:
            shutil.copytree(root, keep, dirs_exist_ok=True)
    results = {name: merged([r[name] for r in measured]) for name in schedules}
    speedups = paired_speedups(measured)
    _print_table(workload, results, speedups, peak, steps, rounds)
    sync = results["sync"]
    base, update = sync["step_s"], sync["update_s"]
    if update <= 0:
        raise RuntimeError(f"sync trained no group in its {steps} measured step(s): no update time to bound by")
    print("the engine's decode, ms a forward (sync and intra decode the same trajectories: a difference between them "
          "is the machine's speed moving): " + ", ".join(f"{name} {r['decode_ms']:.1f}" for name, r in results.items()))
    print(f"rollout share under sync: {sync['rollout_s'] / base:.2f} of the step; bound: sync's update alone takes "
          f"{update:.2f} s of its {base:.2f} s step, so a schedule that hid the whole rollout would reach "
          f"{base / update:.2f}x")
    best = max(speedups, key=lambda name: speedups[name][0], default="sync")
    figures: dict[str, Any] = {"workload": workload, "rollout_share_sync": sync["rollout_s"] / base}
    figures |= {speedup_key(name): mean for name, (mean, _, _) in speedups.items()}
    figures |= {"best": best, "bubble_sync": sync["bubble"], "bubble_overlap": results[best]["bubble"],
                "efficiency_best": sync["tokens_per_step"] / peak / results[best]["step_s"],
                "reward_sync": sync["reward"], "reward_overlap": results[best]["reward"],
                "verifier_hidden_intra": results.get("intra", sync)["hidden"], "speedup_bound": base / update,
                "peak_tokens_per_s": peak,
                "decode_ms": {name: round(r["decode_ms"], 2) for name, r in results.items()}, "rounds": rounds,
                "range_over_rounds": {name: [round(low, 3), round(high, 3)]
                                      for name, (_, low, high) in speedups.items()}}
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    if as_json:
        print(json.dumps(figures))
    return figures


def run_name(schedule: str, round_: int) -> str:
    """The run's name (its folder's prefix under --keep): the schedule's, with its round after the first."""
    name = schedule.replace("+", "-")
    return name if round_ == 1 else f"{name}-round{round_}"


def merged(runs: list[dict[str, float]]) -> dict[str, float]:
    """One schedule's figures over its rounds: the mean of each, the longest answer's maximum."""
    return {k: max(r[k] for r in runs) if k == "max_length" else statistics.mean(r[k] for r in runs) for k in runs[0]}


def paired_speedups(rounds: list[dict[str, dict[str, float]]]) -> dict[str, tuple[float, float, float]]:
    """Schedule -> (mean, lowest, highest) over the rounds of its speedup over the same round's sync."""
    out = {}
    for name in rounds[0]:
        if name != "sync":
            each = [r["sync"]["step_s"] / r[name]["step_s"] for r in rounds]
            out[name] = (statistics.mean(each), min(each), max(each))
    return out


def speedup_key(schedule: str) -> str:
    """The JSON name of a schedule's speedup over sync: speedup_intra_inter, speedup_sync_split, ..."""
    return f"speedup_{schedule.replace('+', '_').replace('-', '_')}"


def _print_table(workload: str, results: dict[str, dict[str, float]],
                 speedups: dict[str, tuple[float, float, float]], peak: float, steps: int, rounds: int) -> None:
    over = f", over {rounds} rounds (a speedup: the mean over the rounds, and its range)" if rounds > 1 else ""
    print(f"workload {workload}: {GROUPS} groups x {GROUP_SIZE}, mean of {steps} steps after 1 warm-up{over}; "
          f"engine peak {peak:.0f} tokens/s")
    header = ("schedule      | step s | rollout s | update s | speedup " + ("| range       " if rounds > 1 else "")
              + "| busy | bubble | tok/s | deferred | staleness | reward | trained / finished len | median / max len | "
                "at cap | stale-dropped | verifier hidden | ideal s | efficiency")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        ideal = r["tokens_per_step"] / peak
        mean, low, high = speedups.get(name, (1.0, 1.0, 1.0))
        spread = f" | {low:4.2f}-{high:4.2f}x" if rounds > 1 else ""
        print(f"{name:13} | {r['step_s']:6.2f} | {r['rollout_s']:9.2f} | {r['update_s']:8.2f} | "
              f"{mean:6.2f}x{spread} | {r['busy']:4.2f} | {r['bubble']:6.2f} | "
              f"{r['tokens_per_s']:5.0f} | {r['deferred']:8.2f} | {r['staleness']:9.2f} | {r['reward']:6.3f} | "
              f"{r['response_length']:10.1f} / {r['finished_length']:8.1f} | "
              f"{r['median_length']:6.0f} / {r['max_length']:5.0f} | {r['length_cap_rate']:6.2f} | "
              f"{r['dropped']:13.2f} | {r['hidden']:15.2f} | {ideal:7.2f} | "
              f"{ideal / r['step_s']:10.2f}")
