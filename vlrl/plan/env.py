"""A cost-model environment: every turn but a trajectory's last calls a tool that takes ``Costs.tool_s`` on one
of ``workers`` sandbox workers (0: as many as there are calls), waiting for a free one as the sandbox's queue does.

It keeps the environment protocol (``vlrl.env``) the rollout manager drives: a prompt of
``prompt_tokens``, then per policy turn either an observation of ``observation_tokens``
after the tool's time, or the end of the episode (its last turn, as the ``Script`` says,
or a turn cut at its token cap). The prompt and every observation open with an image (the
chart, the tool's edit of it): ``IMAGE`` marks it for the cost engine's prefill.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from vlrl.env import Observation, Step, TranscriptEntry
from vlrl.plan.costs import Costs
from vlrl.plan.engine import FILLER, IMAGE, Script
from vlrl.types import Completion, Sample, Segment, Trajectory


class CostEpisode:
    def __init__(self, env: CostEnv, sample: Sample, episode_id: str):
        self.env, self.turns = env, len(env.script(episode_id))
        self.trajectory = Trajectory(episode_id, sample.id, [Segment("prompt", with_image(env.prompt_tokens))])
        self.transcript: list[TranscriptEntry] = []

    @property
    def done(self) -> bool:
        return self.trajectory.finish_reason in ("answer", "length")

    async def step(self, turn: Completion) -> Step:
        traj = self.trajectory
        traj.add_policy(turn)
        if turn.finish_reason == "length" or traj.turns >= self.turns:
            traj.finish_reason = "length" if turn.finish_reason == "length" else "answer"
            traj.answer = ""
            return Step(None, done=True, reason=traj.finish_reason)
        async with self.env.workers:
            await asyncio.sleep(self.env.costs.tool_s)
        ids = with_image(self.env.observation_tokens)
        traj.add_observation(ids)
        return Step(Observation(ids, (), ""), done=False)

    async def close(self) -> None:
        pass


class CostEnv:
    """Episodes whose turns follow ``script`` (trajectory id -> tokens per policy turn)."""

    def __init__(self, costs: Costs, script: Script, prompt_tokens: int, observation_tokens: int, workers: int = 0):
        self.costs, self.script = costs, script
        self.prompt_tokens, self.observation_tokens = prompt_tokens, observation_tokens
        self.workers: contextlib.AbstractAsyncContextManager[Any] = \
            asyncio.Semaphore(workers) if workers else contextlib.nullcontext()

    async def __aenter__(self) -> CostEnv:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    def reset(self, sample: Sample, episode_id: str) -> CostEpisode:
        return CostEpisode(self, sample, episode_id)


def with_image(tokens: int) -> tuple[int, ...]:
    """``tokens`` ids that open with an image."""
    return ((IMAGE,) + (FILLER,) * (tokens - 1)) if tokens > 0 else ()
