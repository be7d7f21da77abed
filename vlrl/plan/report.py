"""What `vlrl plan` prints: every schedule's predicted step on a workload, a recommendation, and the twin's error
against the runs `vlrl bench overlap` measured."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlrl.bench.overlap import GROUP_SIZE, GROUPS, SCHEDULES, schedule_overrides, workload_overrides
from vlrl.config import TrainConfig, load_config
from vlrl.plan.clock import simulate
from vlrl.plan.costs import Placements
from vlrl.plan.twin import Plan, TwinStep, simulate_steps
from vlrl.plan.workloads import Workload, from_run


def predict(plan: Plan, costs: Any, workload: Workload, steps: int, tokenizer: Any, eos_id: int) -> dict[str, float]:
    """The twin's mean figures over ``steps`` steps after a first one (the warm-up a measurement drops too)."""
    plan = replace(plan, prompt_tokens=workload.prompt_tokens, observation_tokens=workload.observation_tokens)
    out = simulate(simulate_steps(plan, costs, workload.script(), steps + 1, tokenizer, eos_id))[1:]
    return mean_figures(out)


def mean_figures(steps: list[TwinStep]) -> dict[str, float]:
    trained = sum(sum(s.staleness.values()) for s in steps)
    return {"step_s": statistics.mean(s.step_s for s in steps), "rollout_s": statistics.mean(s.rollout_s for s in steps),
            "update_s": statistics.mean(s.update_s for s in steps),
            "busy": statistics.mean(s.engine_busy_fraction for s in steps),
            "bubble": statistics.mean(s.bubble_ratio for s in steps),
            "staleness": sum(k * n for s in steps for k, n in s.staleness.items()) / max(trained, 1),
            "policy_tokens": statistics.mean(s.policy_tokens for s in steps)}


def efficiency(figures: dict[str, float], costs: Any, slots: int) -> float:
    """The ideal step (every trained policy token through a full engine batch of ``slots``) over the step."""
    peak = slots / costs.decode_step_s(slots)
    return figures["policy_tokens"] / peak / figures["step_s"]


def schedules(placements: Placements, workload: Workload, steps: int, tokenizer: Any, eos_id: int,
              max_tokens: int) -> dict[str, dict[str, float]]:
    """Every schedule of `vlrl bench overlap` (its own configs), predicted on ``workload``."""
    out = {}
    for name in SCHEDULES:
        cfg = load_config(TrainConfig, None, [*workload_overrides("longtail-cot"), *schedule_overrides(name, "cpu"),
                                              f"rollout.max_new_tokens={max_tokens}"])
        plan, placement = plan_of(cfg)
        out[name] = predict(plan, placements[placement], workload, steps, tokenizer, eos_id)
    return out


def recommend(placements: Placements, workload: Workload, steps: int, tokenizer: Any, eos_id: int,
              max_tokens: int, groups: int = GROUPS, group_size: int = GROUP_SIZE) -> dict[str, Any]:
    """The fastest of a sweep over Δ (0 to B), the verifier's chunk and the placement."""
    best: dict[str, Any] = {}
    for placement in ("colocated", "disaggregated"):
        for extra in sorted({0, max(groups // 4, 1), max(groups // 2, 1), groups}):
            for chunk in (0, 32, 128):
                keep = placement == "disaggregated" and extra > 0
                plan = Plan("overlap" if extra else ("async" if chunk else "sync"), groups, group_size, extra, keep,
                            verifier=True, chunk_tokens=chunk, max_tokens=max_tokens)
                figures = predict(plan, placements[placement], workload, steps, tokenizer, eos_id)
                if not best or figures["step_s"] < best["step_s"]:
                    best = {"placement": placement, "extra_groups": extra, "chunk_tokens": chunk,
                            "decode_during_update": keep, **figures}
    return best


def plan_of(cfg: TrainConfig) -> tuple[Plan, str]:
    """The plan a `vlrl train` config follows, and the placement whose costs apply (the engine in a Ray replica
    beside a one-thread trainer: disaggregated)."""
    rollout, verifier, distributed = cfg.rollout, cfg.verifier, cfg.distributed
    overlap = rollout.schedule == "overlap"
    extra = rollout.extra_groups if rollout.extra_groups != "auto" else -(-rollout.prompts_per_step // 4)
    chunk = 0 if rollout.schedule == "sync" else verifier.chunk_tokens
    plan = Plan(rollout.schedule, rollout.prompts_per_step, rollout.group_size, int(extra) if overlap else 0,
                rollout.decode_during_update, rollout.max_staleness, bool(verifier.model),
                int(chunk) if chunk != "auto" else verifier.chunk_candidates[0], rollout.max_new_tokens,
                slots=cfg.engine.max_num_seqs)
    split = distributed.backend == "ray" and distributed.trainer_threads == 1
    return plan, "disaggregated" if split else "colocated"


def validate(runs: Path, placements: Placements, tokenizer: Any, eos_id: int) -> list[dict[str, Any]]:
    """Measured vs predicted mean step time (after the first step) for every run in ``runs`` (a `vlrl bench overlap
    --keep` folder), each predicted from its own config and trained lengths."""
    cases = []
    for run_dir in sorted(p for p in runs.iterdir() if (p / "lengths.jsonl").is_file()):
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if len(metrics) < 2 or run_dir.name in ("latest",) or run_dir.name.startswith("warmstart"):
            continue  # runs/latest is a copy of the last run (copytree follows links)
        plan, placement = plan_of(load_config(TrainConfig, run_dir / "config.yaml"))
        measured = statistics.mean(r["perf/step_s"] for r in metrics[1:])
        predicted = predict(plan, placements[placement], from_run(run_dir), len(metrics) - 1, tokenizer,
                            eos_id)["step_s"]
        cases.append({"run": run_dir.name, "placement": placement, "measured_s": measured, "predicted_s": predicted,
                      "rel_error": abs(predicted - measured) / measured})
    if not cases:
        raise ValueError(f"{runs}: no `vlrl train` run with lengths.jsonl and 2+ steps (run `vlrl bench overlap "
                         f"--keep {runs}` first)")
    return cases
