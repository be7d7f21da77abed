"""Drive trajectories concurrently on asyncio: decode with the engine, act in the env, reward the answer.

Each trajectory is its own task: while one waits for its tool in the sandbox, the others
keep decoding (the engine batches whatever requests are in flight). Observation tokens
enter with loss mask 0 through the episode; every policy token keeps its behavior
logprob and the weight version that sampled it. G trajectories of one sample form a
``Group``. How rewards are scheduled is the ``schedule``: ``sync`` rewards every
trajectory after all have finished (the baseline the papers compare against); the
overlap scheduler rewards each as it ends.

Nothing is lost: a trajectory whose engine request, episode or reward raises is recorded
in ``RolloutResult.dropped`` with the reason, and its group is not trained (GRPO trains
groups whole).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

from vlrl.engines.base import Engine
from vlrl.env import Env
from vlrl.types import Group, Sample, SamplingParams, Score, Trajectory

Schedule = Literal["sync", "async"]
Reward = Callable[[str, Sequence[str]], Score]


@dataclass
class RolloutResult:
    """The groups of one rollout, what was dropped and why, and the phase times (seconds)."""

    groups: list[Group]
    dropped: Counter = field(default_factory=Counter)  # reason -> trajectories
    errors: list[str] = field(default_factory=list)  # the first few messages, for the log
    seconds: dict[str, float] = field(default_factory=dict)  # wall, generate, reward

    @property
    def trajectories(self) -> list[Trajectory]:
        return [t for g in self.groups for t in g.trajectories]


class RolloutManager:
    """Samples x G trajectories through ``engine`` and ``env``, rewarded by ``reward``."""

    def __init__(self, engine: Engine, env: Env, tokenizer: Any, reward: Reward, sampling: SamplingParams,
                 group_size: int, schedule: Schedule = "sync"):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if schedule not in ("sync", "async"):
            raise ValueError(f"unknown schedule {schedule!r}; choose sync or async")
        self.engine, self.env, self.tokenizer, self.reward = engine, env, tokenizer, reward
        self.sampling, self.group_size, self.schedule = sampling, group_size, schedule

    async def rollout(self, samples: Sequence[Sample], seed: int, tag: str = "r") -> RolloutResult:
        """One rollout: every sample ``group_size`` times. ``seed`` makes the sampling reproducible."""
        start = time.perf_counter()
        result = RolloutResult([])
        jobs = [(s, f"{tag}-{i}-{k}") for i, s in enumerate(samples) for k in range(self.group_size)]
        rewarded = self.schedule != "sync"
        outcomes = await asyncio.gather(
            *(self._trajectory(sample, traj_id, seed * 1_000_003 + n, rewarded)
              for n, (sample, traj_id) in enumerate(jobs)),
            return_exceptions=True)
        generated = time.perf_counter()
        by_sample: dict[int, list[Trajectory | BaseException]] = {}
        for n, outcome in enumerate(outcomes):
            by_sample.setdefault(n // self.group_size, []).append(outcome)
        for i, sample in enumerate(samples):
            members = by_sample[i]
            if not rewarded and not any(isinstance(m, BaseException) for m in members):
                members = [self._score_or_error(m, sample) for m in members]  # type: ignore[arg-type]
            failures = [m for m in members if isinstance(m, BaseException)]
            if failures:
                for failure in failures:
                    if isinstance(failure, asyncio.CancelledError):
                        raise failure
                    result.dropped[f"error: {type(failure).__name__}"] += 1
                    if len(result.errors) < 5:
                        result.errors.append(f"sample {sample.id!r}: {type(failure).__name__}: {failure}")
                if len(failures) < len(members):
                    result.dropped["group incomplete"] += len(members) - len(failures)
                continue
            result.groups.append(Group(sample, [m for m in members if isinstance(m, Trajectory)]))
        end = time.perf_counter()
        result.seconds = {"wall": end - start, "generate": generated - start, "reward": end - generated}
        return result

    async def _trajectory(self, sample: Sample, traj_id: str, seed: int, reward_now: bool) -> Trajectory:
        episode = self.env.reset(sample, traj_id)
        traj = episode.trajectory
        decode = act = 0.0
        start = time.perf_counter()
        try:
            turn = 0
            while not episode.done:
                sampling = _with_seed(self.sampling, seed * 64 + turn)
                t0 = time.perf_counter()
                completion = await self.engine.complete(traj.token_ids, traj.images, sampling, f"{traj_id}/t{turn}")
                t1 = time.perf_counter()
                await episode.step(completion)
                decode, act = decode + t1 - t0, act + time.perf_counter() - t1
                turn += 1
        finally:
            await episode.close()
        traj.timings = {"decode_s": decode, "env_s": act, "wall_s": time.perf_counter() - start}
        if reward_now:
            score_trajectory(traj, sample, self.tokenizer, self.reward)
        return traj

    def _score_or_error(self, traj: Trajectory, sample: Sample) -> Trajectory | Exception:
        try:
            score_trajectory(traj, sample, self.tokenizer, self.reward)
        except Exception as e:  # a broken reward drops this group, counted, and the run goes on
            return e
        return traj


def score_trajectory(traj: Trajectory, sample: Sample, tokenizer: Any, reward: Reward) -> None:
    """Reward the final policy turn's text (decoded for the reward only; training keeps the ids)."""
    t0 = time.perf_counter()
    last = next((s for s in reversed(traj.segments) if s.kind == "policy"), None)
    text = tokenizer.decode(last.token_ids, skip_special_tokens=True) if last is not None else ""
    score = reward(text, sample.answers)
    traj.reward, traj.reward_parts = score.total, dict(score.parts)
    traj.timings["reward_s"] = time.perf_counter() - t0


def _with_seed(sampling: SamplingParams, seed: int) -> SamplingParams:
    return replace(sampling, seed=seed % (2**31))
