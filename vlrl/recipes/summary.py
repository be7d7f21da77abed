"""The figures around RL: held-out accuracy before and after (with paired intervals), and the run's summary."""

from __future__ import annotations

import json
import resource
from itertools import islice
from pathlib import Path
from typing import Any

from vlrl.config import TaskConfig, TrainConfig
from vlrl.env import Env
from vlrl.eval.heldout import (
    BASELINES,
    accuracy_by_task,
    evaluate_agent,
    evaluate_policy,
    majority_baseline,
    paired_bootstrap,
    regressions,
)
from vlrl.task import open_task
from vlrl.types import Sample

# held-out figures drawn on accuracy.png (greedy answers to questions never trained on)
HELDOUT_MARKS = {"teacher (held-out)": "teacher_accuracy", "warm start (held-out, greedy)": "heldout_accuracy_warmstart",
                 "RL (held-out, greedy)": "heldout_accuracy_rl", "majority answer": "majority_baseline"}
# paired 95% intervals of RL minus a baseline over the same held-out questions: figure -> the baseline's
# per-question results (the warm start's: the RL gain; the teacher's: whether RL beats it)
PAIRED = {"rl_gain_ci95": "heldout_correct_warmstart", "rl_vs_teacher_ci95": "heldout_correct_teacher"}
# per-question lists: kept in the run's state (a resumed run pairs against them), written to heldout.jsonl
# (runs compared question by question: `vlrl compare`), never in summary.json
PER_QUESTION = {"heldout_correct_teacher": ("correct", "teacher"), "heldout_correct_warmstart": ("correct", "warmstart"),
                "heldout_correct_rl": ("correct", "rl"), "heldout_tools_teacher": ("tool_called", "teacher"),
                "heldout_tools_warmstart": ("tool_called", "warmstart"), "heldout_tools_rl": ("tool_called", "rl")}


def heldout_samples(cfg: TrainConfig) -> list[Sample]:
    """The held-out questions: the task under ``heldout.seed`` with ``heldout.task_args`` merged in."""
    if not cfg.heldout.samples:
        return []
    task = TaskConfig(cfg.task.name, {**cfg.task.args, **cfg.heldout.task_args}, cfg.task.reward)
    samples = list(islice(open_task(task, cfg.heldout.seed)[0], cfg.heldout.samples))
    if len(samples) < cfg.heldout.samples:
        raise ValueError(f"heldout.samples is {cfg.heldout.samples} but the held-out task has {len(samples)}")
    return samples


async def heldout_before(cfg: TrainConfig, env: Env, engine: Any, tokenizer: Any, reward: Any,
                         samples: list[Sample], agent: Any) -> dict[str, Any]:
    """Before RL: the majority answer, the agent's (the warm start's teacher) and the policy's greedy accuracy."""
    figures: dict[str, Any] = {"heldout_questions": len(samples), "majority_baseline": majority_baseline(samples,
                                                                                                          reward)}
    if agent is not None:
        judged = await evaluate_agent(env, tokenizer, reward, agent, samples, tag="heldout-agent")
        figures |= {"teacher_accuracy": judged.accuracy, "teacher_tool_call_rate": judged.tool_call_rate,
                    "heldout_correct_teacher": judged.correct, "heldout_tools_teacher": judged.tool_called}
    before = await evaluate_policy(engine, env, tokenizer, reward, samples, cfg.rollout.max_new_tokens, "heldout-ws")
    figures |= {"heldout_accuracy_warmstart": before.accuracy, "tool_call_rate_warmstart": before.tool_call_rate,
                "heldout_dropped_warmstart": dict(before.dropped), "heldout_correct_warmstart": before.correct,
                "heldout_tools_warmstart": before.tool_called}
    return figures


async def heldout_after(cfg: TrainConfig, env: Env, engine: Any, tokenizer: Any, reward: Any,
                        samples: list[Sample], before: dict[str, Any]) -> dict[str, Any]:
    """After RL: the policy's greedy accuracy, paired intervals against the figures before, and per task."""
    after = await evaluate_policy(engine, env, tokenizer, reward, samples, cfg.rollout.max_new_tokens, "heldout-rl")
    figures: dict[str, Any] = {"heldout_accuracy_rl": after.accuracy, "tool_call_rate_rl": after.tool_call_rate,
                               "heldout_dropped_rl": dict(after.dropped),  # reason -> questions counted wrong
                               "heldout_correct_rl": after.correct, "heldout_tools_rl": after.tool_called}
    for name, baseline in PAIRED.items():
        if baseline in before:
            figures[name] = list(paired_bootstrap(before[baseline], after.correct, seed=cfg.seed))
    earlier = {key.removeprefix("heldout_correct_"): before[key] for key in PAIRED.values() if key in before}
    figures["heldout_by_task"] = accuracy_by_task(samples, earlier | {"rl": after.correct})
    figures["regressions"] = regressions(samples, earlier | {"rl": after.correct}, seed=cfg.seed)
    return figures


def write_heldout(path: Path, samples: list[Sample], summary: dict[str, Any]) -> None:
    """Move the per-question lists out of ``summary`` into ``path`` (JSON lines): a question's id, task and
    answers, and for each policy whether it was right and whether it called a tool."""
    lists = {key: summary.pop(key) for key in PER_QUESTION if key in summary}
    if not samples or not lists:
        return
    with path.open("w") as f:
        for at, sample in enumerate(samples):
            row: dict[str, Any] = {"id": sample.id, "task": sample.task, "answers": list(sample.answers)}
            for key, values in lists.items():
                field, policy = PER_QUESTION[key]
                row.setdefault(field, {})[policy] = values[at]
            f.write(json.dumps(row) + "\n")


def peak_rss_gb() -> float:
    """Peak resident memory of this process plus its largest child (an engine's workers), in GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024**2


def print_summary(summary: dict[str, Any], path: Path) -> None:
    """The run's headline figures, one per line (a mix of tasks: a line per task too), and where it was written."""
    keys = ("heldout_questions", "teacher_accuracy", "heldout_accuracy_warmstart", "heldout_accuracy_rl",
            *PAIRED, "majority_baseline", "tool_call_rate_warmstart", "tool_call_rate_rl", "final_reward",
            "wall_seconds", "peak_rss_gb")
    for key in keys:
        if summary.get(key) is not None:
            value = summary[key]
            shown = f"[{value[0]:+.3f}, {value[1]:+.3f}]" if isinstance(value, list) else (
                f"{value:.3f}" if isinstance(value, float) else value)
            print(f"  {key:28s} {shown}")
    groups = summary.get("groups")
    if groups:
        dropped = groups["dropped_trajectories"]
        reasons = f" ({', '.join(f'{reason}: {n}' for reason, n in dropped.items())})" if dropped else ""
        print(f"  {'groups':28s} {groups['entered']} entered: {groups['trained']} trained, {sum(dropped.values())} "
              f"trajectories dropped{reasons}, {groups['in_flight_at_end']} in flight at the end")
    by_task = summary.get("heldout_by_task", {})
    if len(by_task) > 1:  # a mix: one line per task
        for task, figures in by_task.items():
            shown = ", ".join(f"{name} {value:.3f}" for name, value in figures.items() if name != "questions")
            print(f"  {task:28s} {figures['questions']} questions: {shown}")
    for fell in summary.get("regressions", []):
        low, high = fell["rl_minus_ci95"]
        print(f"  ! {fell['task']}: RL {fell['rl']:.3f} is below the {BASELINES[fell['below']]} "
              f"{fell[fell['below']]:.3f} on {fell['questions']} held-out questions (RL minus it, paired 95% "
              f"interval [{low:+.3f}, {high:+.3f}])")
    print(f"run written to {path} (summary.json, heldout.jsonl, metrics.jsonl, reward.png, accuracy.png, transcripts/, "
          "checkpoints/)")
