"""A rollout's figures for the step's record (``vlrl.metrics``): what its trajectories did, their reward, the
verifier's prefill, and the rollout's time."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from vlrl.metrics import PerfFigures, RewardFigures, RolloutFigures, SchedFigures, StepRecord, VerifierFigures
from vlrl.rollout.manager import RolloutResult


def rollout_record(result: RolloutResult, groups_started: int) -> StepRecord:
    """The step's record as far as the rollout knows it: means over its trained trajectories."""
    trajs = result.trajectories
    n = max(len(trajs), 1)
    stats = [t.tool_stats() for t in trajs]
    calls = sum(s["tool_calls"] for s in stats)
    ran = [a for t in trajs for a in t.actions if a.kind != "invalid"]
    uses = Counter(a.name or a.kind for a in ran)
    fine = Counter(a.name or a.kind for a in ran if a.ok)
    policy_tokens = [sum(t.loss_mask) for t in trajs]
    generate, reward_s = result.seconds.generate, result.seconds.reward
    rollout = RolloutFigures(
        trajectories=len(trajs), dropped=dict(result.dropped), finish=dict(Counter(t.finish_reason for t in trajs)),
        tool_call_rate=sum(s["tool_calls"] > 0 for s in stats) / n, tool_calls=calls / n,
        tool_error_rate=sum(s["tool_errors"] for s in stats) / max(calls, 1),
        tool_uses=dict(sorted(uses.items())), tool_success={name: fine[name] / count for name, count in sorted(uses.items())},
        parse_errors=sum(s["parse_errors"] for s in stats) / n,
        sandbox_restarts=sum(s["sandbox_restarts"] for s in stats), turns=sum(t.turns for t in trajs) / n,
        response_length=sum(policy_tokens) / n, response_length_median=statistics.median(policy_tokens or [0]),
        response_length_max=max(policy_tokens, default=0),
        behavior_version=min((v for t in trajs for v in t.versions if v >= 0), default=-1))
    parts = sorted({k for t in trajs for k in t.reward_parts})
    reward = RewardFigures(mean=sum(t.reward or 0.0 for t in trajs) / n,
                           parts={k: sum(t.reward_parts.get(k, 0.0) for t in trajs) / n for k in parts}) \
        if trajs else None  # nothing trained: no reward to report
    perf = PerfFigures(rollout_s=generate, reward_s=reward_s, tokens_per_s=sum(policy_tokens) / max(generate, 1e-9))
    return StepRecord(rollout, reward, SchedFigures(groups_started=groups_started), perf,
                      verifier=verifier_figures(result))


def verifier_figures(result: RolloutResult) -> VerifierFigures | None:
    """Where the verifier's prefill ran for the trajectories it judged: under decoding (early) or after the last
    token (late); None when none was judged."""
    judged = [t.timings for t in result.trajectories if t.timings.verifier_early_tokens is not None]
    if not judged:
        return None
    early = sum(t.verifier_early_tokens or 0 for t in judged)
    late = sum(t.verifier_late_tokens for t in judged)
    return VerifierFigures(early_tokens=early, late_tokens=late, hidden_fraction=early / max(early + late, 1),
                           finish_s=sum(t.verifier_finish_s for t in judged) / len(judged))


# tool-use collapse (DeepEyes, Pixel Reasoner, Mini-o3 report RL driving the call rate to zero): the rate over the
# first BASELINE_STEPS RL steps of the run, and how many steps in a row under COLLAPSE_FRACTION of it make a collapse
BASELINE_STEPS = 3
COLLAPSE_FRACTION = 0.25
COLLAPSE_STEPS = 3


def watch_tool_use(health: dict[str, Any], step: int, rate: float) -> str | None:
    """Follow the tool-call rate in ``health`` (kept in summary.json, so a resumed run goes on from it); the warning
    to print on the step it has stayed under a quarter of its start for three steps, once a run."""
    rates = health.setdefault("first_rates", [])
    if len(rates) < BASELINE_STEPS:
        rates.append(rate)
        return None
    baseline = sum(rates) / len(rates)
    health["low_steps"] = health.get("low_steps", 0) + 1 if rate < COLLAPSE_FRACTION * baseline else 0
    if health["low_steps"] < COLLAPSE_STEPS or "collapsed_at_step" in health:
        return None
    health |= {"collapsed_at_step": step, "rate": rate, "baseline": baseline}
    return (f"step {step}: tool use collapsed: {rate:.0%} of trajectories call a tool, against {baseline:.0%} in the "
            f"first {BASELINE_STEPS} steps ({COLLAPSE_STEPS} steps in a row under a quarter of it); see "
            "rollout/tool_uses and rollout/tool_success in metrics.jsonl")
