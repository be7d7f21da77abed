"""What `vlrl plan` prints: every schedule's predicted step on a workload, a recommendation, and the twin's error
against the runs `vlrl bench overlap` measured."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from vlrl.bench.overlap import AHEAD, CHUNK, EXTRA, GROUP_SIZE, GROUPS
from vlrl.plan.clock import simulate
from vlrl.plan.costs import Placements
from vlrl.plan.twin import Plan, TwinStep, simulate_steps
from vlrl.plan.workloads import Workload, from_run

# `vlrl bench overlap`'s schedules: (the plan, the placement whose costs apply)
SCHEDULES: dict[str, tuple[dict[str, Any], str]] = {
    "sync": ({"schedule": "sync"}, "colocated"),
    "intra": ({"schedule": "async", "chunk_tokens": CHUNK}, "colocated"),
    "inter": ({"schedule": "overlap", "extra": EXTRA}, "colocated"),
    "intra+inter": ({"schedule": "overlap", "extra": EXTRA, "chunk_tokens": CHUNK}, "colocated"),
    "sync-split": ({"schedule": "sync"}, "disaggregated"),
    "disaggregated": ({"schedule": "overlap", "extra": AHEAD, "chunk_tokens": CHUNK, "keep_decoding": True},
                      "disaggregated"),
}


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
              max_tokens: int, groups: int = GROUPS, group_size: int = GROUP_SIZE) -> dict[str, dict[str, float]]:
    """Every schedule of `vlrl bench overlap` on ``workload``, predicted."""
    out = {}
    for name, (fields, placement) in SCHEDULES.items():
        plan = Plan(groups=groups, group_size=group_size, verifier=True, max_tokens=max_tokens, **fields)
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


def run_plan(run_dir: Path) -> tuple[Plan, str]:
    """The plan a `vlrl train` run followed (its config.yaml), and the placement whose costs apply."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    rollout, verifier = cfg["rollout"], cfg["verifier"]
    split = cfg["distributed"]["backend"] == "ray" and cfg["distributed"].get("trainer_threads") == 1
    chunk = verifier["chunk_tokens"] if rollout["schedule"] != "sync" else 0
    plan = Plan(rollout["schedule"], rollout["prompts_per_step"], rollout["group_size"],
                int(rollout["extra_groups"]) if rollout["schedule"] == "overlap" else 0,
                bool(rollout.get("decode_during_update")), rollout.get("max_staleness"), bool(verifier["model"]),
                int(chunk) if chunk != "auto" else 32, rollout["max_new_tokens"], slots=cfg["engine"]["max_num_seqs"])
    return plan, "disaggregated" if split else "colocated"


def validate(runs: Path, placements: Placements, tokenizer: Any, eos_id: int) -> list[dict[str, Any]]:
    """Measured vs predicted mean step time (after the first step) for every run in ``runs`` (a `vlrl bench overlap
    --keep` folder), each predicted from its own config and trained lengths."""
    cases = []
    for run_dir in sorted(p for p in runs.iterdir() if (p / "lengths.jsonl").is_file()):
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if len(metrics) < 2 or run_dir.name in ("latest",) or run_dir.name.startswith("warmstart"):
            continue  # runs/latest is a copy of the last run (copytree follows links)
        plan, placement = run_plan(run_dir)
        measured = statistics.mean(r["perf/step_s"] for r in metrics[1:])
        predicted = predict(plan, placements[placement], from_run(run_dir), len(metrics) - 1, tokenizer,
                            eos_id)["step_s"]
        cases.append({"run": run_dir.name, "placement": placement, "measured_s": measured, "predicted_s": predicted,
                      "rel_error": abs(predicted - measured) / measured})
    if not cases:
        raise ValueError(f"{runs}: no `vlrl train` run with lengths.jsonl and 2+ steps (run `vlrl bench overlap "
                         f"--keep {runs}` first)")
    return cases
