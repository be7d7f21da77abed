"""Held-out accuracy of a policy (greedy, through the rollout manager) or of a model-free agent.

Per question: whether the answer was right (the reward's ``accuracy`` part, else its total)
and whether a tool was called. A question whose trajectory was dropped counts as wrong
and is counted, so a broken episode can never raise the accuracy. ``paired_bootstrap``
gives the 95% interval of a difference measured on the same questions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vlrl.engines.base import Engine
from vlrl.env import Env
from vlrl.rollout.manager import Reward, RolloutManager, score_trajectory
from vlrl.rollout.play import play_agent
from vlrl.types import Sample, SamplingParams, Trajectory


@dataclass
class Heldout:
    """Per-question results, in the order of the questions."""

    correct: list[float]
    tool_called: list[bool]
    dropped: Counter = field(default_factory=Counter)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(len(self.correct), 1)

    @property
    def tool_call_rate(self) -> float:
        return sum(self.tool_called) / max(len(self.tool_called), 1)


def trajectory_accuracy(traj: Trajectory) -> float:
    """Whether a rewarded trajectory's answer was right: the reward judge's verdict where one graded it
    (``reward_judge``: its score at least a half), else the reward's ``accuracy`` part, else its total."""
    parts = traj.reward_parts
    return float(parts["judge"] >= 0.5) if "judge" in parts else float(parts.get("accuracy", traj.reward or 0.0))


def answer_accuracy(reward: Reward, answer: str, answers: Sequence[str]) -> float:
    """Whether ``reward`` accepts a bare ``answer`` for ``answers`` (its ``accuracy`` part, else its total)."""
    score = reward(f"FINAL ANSWER: {answer}", answers)
    return float(score.parts.get("accuracy", score.total))


def _outcome(traj: Trajectory) -> tuple[float, bool]:
    return trajectory_accuracy(traj), traj.tool_stats()["tool_calls"] > 0


async def evaluate_policy(engine: Engine, env: Env, tokenizer: Any, reward: Reward, samples: Sequence[Sample],
                          max_new_tokens: int, tag: str = "heldout") -> Heldout:
    """Greedy answers of the engine's current weights to ``samples``."""
    manager = RolloutManager(engine, env, tokenizer, reward, SamplingParams(max_tokens=max_new_tokens, temperature=0),
                             group_size=1)
    result = await manager.rollout(samples, seed=0, tag=tag)
    by_id = {g.sample.id: _outcome(g.trajectories[0]) for g in result.groups}
    outcomes = [by_id.get(s.id, (0.0, False)) for s in samples]
    return Heldout([c for c, _ in outcomes], [t for _, t in outcomes], result.dropped)


async def evaluate_agent(env: Env, tokenizer: Any, reward: Reward, agent: Any, samples: Sequence[Sample],
                         tag: str = "agent") -> Heldout:
    """The answers of a model-free ``agent`` (e.g. the teacher) to ``samples``, scored like a policy's."""
    trajectories = await play_agent(env, tokenizer, agent, samples, tag)
    for traj, sample in zip(trajectories, samples):
        score_trajectory(traj, sample, tokenizer, reward)
    outcomes = [_outcome(t) for t in trajectories]
    return Heldout([c for c, _ in outcomes], [t for _, t in outcomes])


def majority_baseline(samples: Sequence[Sample], reward: Reward) -> float:
    """Accuracy of always giving the most common answer: what a model that ignores the image can reach."""
    if not samples:
        return 0.0
    common = Counter(s.answers[0] for s in samples).most_common(1)[0][0]
    return sum(answer_accuracy(reward, common, s.answers) for s in samples) / len(samples)


def accuracy_by_task(samples: Sequence[Sample], correct: dict[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per task of a mixed held-out set (``Sample.task``): its question count and each policy's accuracy.

    ``correct`` maps a policy's name (teacher, warmstart, rl...) to its per-question results in
    the order of ``samples``; a mix can hide one task falling while the other rises.
    """
    rows = _task_rows(samples, correct)
    return {task: {"questions": len(at), **{name: sum(results[k] for k in at) / len(at)
                                            for name, results in correct.items()}}
            for task, at in rows.items()}


BASELINES = {"warmstart": "warm start", "teacher": "teacher"}  # what RL must not fall below, on any task


def regressions(samples: Sequence[Sample], correct: dict[str, Sequence[float]], seed: int = 0) -> list[dict[str, Any]]:
    """Every task (and, in a mix, the whole set) on which RL (``correct["rl"]``) answers fewer questions right than
    a baseline of ``BASELINES`` does, with the paired 95% interval of RL minus the baseline over that task's
    questions: a headline that rose can hide a task that fell."""
    rows = _task_rows(samples, correct)
    if len(rows) > 1:
        rows = {"all": list(range(len(samples))), **rows}
    found = []
    for task, at in rows.items():
        rl = [correct["rl"][k] for k in at]
        for name in BASELINES:
            if name not in correct:
                continue
            base = [correct[name][k] for k in at]
            if sum(rl) < sum(base):
                low, high = paired_bootstrap(base, rl, seed=seed)
                found.append({"task": task, "below": name, "questions": len(at), "rl": sum(rl) / len(at),
                              name: sum(base) / len(at), "rl_minus_ci95": [low, high]})
    return found


def _task_rows(samples: Sequence[Sample], correct: dict[str, Sequence[float]]) -> dict[str, list[int]]:
    """Task -> the positions of its questions; every policy's results must cover every question."""
    for name, results in correct.items():
        if len(results) != len(samples):
            raise ValueError(f"{name} has {len(results)} results for {len(samples)} questions")
    rows: dict[str, list[int]] = {}
    for at, sample in enumerate(samples):
        rows.setdefault(sample.task, []).append(at)
    return rows


def paired_bootstrap(before: Sequence[float], after: Sequence[float], resamples: int = 10_000,
                     seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(after - before) over questions resampled with replacement."""
    if len(before) != len(after) or not before:
        raise ValueError(f"paired samples must have one non-zero length, got {len(before)} and {len(after)}")
    diffs = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.concatenate([diffs[rng.integers(0, len(diffs), (min(1000, resamples - k), len(diffs)))].mean(axis=1)
                            for k in range(0, resamples, 1000)])
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)
