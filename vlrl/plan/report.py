"""What `vlrl plan` prints: every schedule's predicted step on a workload, a recommendation, and the twin's error
against the runs `vlrl bench overlap` measured."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlrl.bench.overlap import SCHEDULES, schedule_overrides, workload_overrides
from vlrl.config import TrainConfig, load_config
from vlrl.plan.clock import simulate
from vlrl.plan.costs import Placements
from vlrl.plan.presets import Preset
from vlrl.plan.twin import Plan, TwinStep, simulate_steps
from vlrl.plan.workloads import Workload, from_run
from vlrl.runlog import read_log

ENGINE_TIMES = ("busy_s", "decode_s", "prefill_s", "cache_s")  # the engine's counters validate compares
PRESET_TICK = 64  # at a preset's scale (thousands of requests) the cost engine emits a delta per 64 tokens at most


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
            "policy_tokens": statistics.mean(s.policy_tokens for s in steps),
            **{f"engine_{name}": statistics.mean(s.engine[name] for s in steps) for name in ENGINE_TIMES}}


def efficiency(figures: dict[str, float], costs: Any, slots: int) -> float:
    """The ideal step (every trained policy token through a full engine batch of ``slots``) over the step."""
    peak = slots / costs.decode_step_s(slots)
    return figures["policy_tokens"] / peak / figures["step_s"]


def schedules(placements: Placements, workload: Workload, steps: int, tokenizer: Any, eos_id: int,
              preset: Preset | None = None) -> dict[str, dict[str, float]]:
    """Every schedule of `vlrl bench overlap` (its own configs; under a preset, at the preset's batch), predicted on
    ``workload`` under its turn cap."""
    out = {}
    for name in SCHEDULES:
        cfg = load_config(TrainConfig, None, [*workload_overrides("longtail-cot"), *schedule_overrides(name, "cpu"),
                                              f"rollout.max_new_tokens={workload.max_tokens}"])
        plan, placement = plan_of(cfg)
        out[name] = predict(at_scale(plan, preset, placement), placements[placement], workload, steps, tokenizer,
                            eos_id)
    return out


def at_scale(plan: Plan, preset: Preset | None, placement: str) -> Plan:
    """``plan`` at the preset's batch (Δ in proportion, the engines' slots under ``placement``); as is without one."""
    if preset is None:
        return plan
    return replace(plan, groups=preset.groups, group_size=preset.group_size,
                   extra=round(plan.extra * preset.groups / plan.groups), slots=preset.slots(placement),
                   tick=PRESET_TICK, tool_workers=0)  # a cluster's sandboxes grow with its batch


def recommend(placements: Placements, workload: Workload, steps: int, tokenizer: Any, eos_id: int,
              preset: Preset | None = None) -> dict[str, Any]:
    """The fastest setting found: first the placement (colocated, or the engines' share of the devices) and Δ (0 to
    B) with the verifier reading whole answers, then streamed in chunks of 32 or 128 at the best of those (a
    streamed verifier's pieces are most of a long-answer simulation's events, so they are tried once, at the
    end)."""
    base, _ = plan_of(load_config(TrainConfig, None, workload_overrides("longtail-cot")))  # its batch, sandbox

    def run(placement: str, fraction: float, chunk: int) -> dict[str, Any]:
        extra = max(round(base.groups * fraction), 1) if fraction else 0
        plan = at_scale(replace(base, schedule="overlap" if extra else ("async" if chunk else "sync"), extra=extra,
                                keep_decoding=placement.startswith("disaggregated") and extra > 0, verifier=True,
                                chunk_tokens=chunk, max_tokens=workload.max_tokens, slots=0), preset, placement)
        figures = predict(plan, placements[placement], workload, steps, tokenizer, eos_id)
        return {"placement": placement, "extra_fraction": fraction, "extra_groups": plan.extra,
                "chunk_tokens": chunk, "decode_during_update": plan.keep_decoding, "slots": plan.capacity, **figures}

    best = min((run(placement, fraction, 0) for placement in placements for fraction in (0, 0.25, 0.5, 1)),
               key=lambda r: r["step_s"])
    return min([best, *(run(best["placement"], best["extra_fraction"], chunk) for chunk in (32, 128))],
               key=lambda r: r["step_s"])


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
                slots=cfg.engine.max_num_seqs, tool_workers=cfg.env.sandbox.workers,
                micro_batch_tokens=cfg.optim.micro_batch_tokens)
    split = distributed.backend == "ray" and distributed.trainer_threads == 1
    return plan, "disaggregated" if split else "colocated"


def measured_runs(folder: Path) -> list[tuple[Path, str]]:
    """The `vlrl train` runs in ``folder`` (a `vlrl bench overlap --keep` folder) that can be replayed, each with its
    placement: those with lengths.jsonl and 2+ steps, not the warm start, not runs/latest (a copy of the last run)."""
    out = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "lengths.jsonl").is_file()):
        if len(read_log(run_dir)) < 2 or run_dir.name == "latest" or run_dir.name.startswith("warmstart"):
            continue
        out.append((run_dir, plan_of(load_config(TrainConfig, run_dir / "config.yaml"))[1]))
    if not out:
        raise ValueError(f"{folder}: no `vlrl train` run with lengths.jsonl and 2+ steps (run `vlrl bench overlap "
                         f"--keep {folder}` first)")
    return out


def fitted_to(folder: Path, placements: Placements, tokenizer: Any, eos_id: int,
              leave_out: Path | None = None) -> Placements:
    """``placements`` with each placement that has runs in ``folder`` fitted to them (``calibrate.fitted``), all but
    ``leave_out``."""
    from vlrl.plan.calibrate import fitted

    runs = [(d, p) for d, p in measured_runs(folder) if leave_out is None or d.resolve() != leave_out.resolve()]
    out = dict(placements)
    for placement in {p for _, p in runs}:
        out[placement] = fitted([d for d, p in runs if p == placement], placements[placement], tokenizer, eos_id)
    return out


def validate(runs: Path, placements: Placements, tokenizer: Any, eos_id: int,
             fit: Path | None = None) -> list[dict[str, Any]]:
    """Measured vs predicted mean step time (after the first step) for every run in ``runs`` (a `vlrl bench overlap
    --keep` folder), each predicted from its own config and trained trajectories; and the step's two parts, the
    rollout (generation and reward, until the batch closes) and the update (with the weight push). With ``fit``,
    each run's costs are fitted to that folder's runs of its placement (``fitted_to``) but the run itself: where
    ``fit`` is ``runs``, each run is predicted from what the others measured (leave one out)."""
    if fit is not None and fit.resolve() != runs.resolve():  # no run to leave out: one fit serves every run
        placements, fit = fitted_to(fit, placements, tokenizer, eos_id), None
    cases = []
    for run_dir, placement in measured_runs(runs):
        plan, _ = plan_of(load_config(TrainConfig, run_dir / "config.yaml"))
        costs = (fitted_to(fit, placements, tokenizer, eos_id, leave_out=run_dir) if fit else placements)[placement]
        steps = read_log(run_dir)[1:]
        measured = statistics.mean(r["perf/step_s"] for r in steps)
        predicted = predict(plan, costs, from_run(run_dir), len(steps), tokenizer, eos_id)
        cases.append({"run": run_dir.name, "placement": placement, "measured_s": measured,
                      "predicted_s": predicted["step_s"], "rel_error": abs(predicted["step_s"] - measured) / measured,
                      "measured_rollout_s": statistics.mean(r["perf/rollout_s"] + r["perf/reward_s"] for r in steps),
                      "predicted_rollout_s": predicted["rollout_s"],
                      "measured_update_s": statistics.mean(r["perf/update_s"] + r["perf/sync_s"] for r in steps),
                      "predicted_update_s": predicted["update_s"]})
        if all(f"engine/{name}" in steps[0] for name in ENGINE_TIMES):  # the HF engine's, in process or replicas
            for name in ENGINE_TIMES:
                cases[-1] |= {f"measured_engine_{name}": statistics.mean(r[f"engine/{name}"] for r in steps),
                              f"predicted_engine_{name}": predicted[f"engine_{name}"]}
    return cases
