"""Engine/trainer logprob parity on multi-image tool trajectories.

``two_turn_rollout`` samples a trajectory the way a tool-using agent does (question with
a chart → answer → tool observation with an edited chart → answer) and
``logprob_parity`` compares the engine's behavior logprobs with the trainer's forward on
the same ids and images. Used by ``vlrl bench engine`` and by the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel

from vlrl.demo import bar_chart, question_prompt, tool_observation
from vlrl.engines.base import Engine
from vlrl.trainer.logprobs import trajectory_logprobs
from vlrl.types import SamplingParams, Segment, Trajectory
from vlrl.vision import VisionInputs


@dataclass(frozen=True)
class Parity:
    """|trainer logprob - behavior logprob| over the policy tokens of some trajectories."""

    mean_abs: float
    max_abs: float
    tokens: int


async def two_turn_rollout(
    engine: Engine,
    tokenizer: Any,
    vision: VisionInputs,
    request_id: str,
    tokens_per_turn: int = 128,
    seed: int = 0,
    size: tuple[int, int] = (112, 112),
) -> Trajectory:
    """Sample two policy turns around a tool observation that returns a second image (both charts ``size``).

    End-of-sequence tokens are suppressed so each turn runs ``tokens_per_turn`` tokens.
    """
    values = [3.0, 7.0, 5.0, 2.0]
    chart, edited = bar_chart(values, size=size), bar_chart(values, size=size, highlight=1)
    prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", chart)
    traj = Trajectory(request_id, "demo", [Segment("prompt", tuple(prompt), images=(chart,))])
    sampling = SamplingParams(max_tokens=tokens_per_turn, temperature=1.0, seed=seed,
                              suppress_token_ids=engine.eos_ids)
    traj.add_policy(await engine.complete(traj.token_ids, traj.images, sampling, request_id))
    obs = tool_observation(tokenizer, vision, "Execution success.", edited)
    traj.add_observation(tuple(obs), (edited,))
    sampling = dataclasses.replace(sampling, seed=seed + 1)
    traj.add_policy(await engine.complete(traj.token_ids, traj.images, sampling, request_id))
    return traj


def logprob_parity(model: PreTrainedModel, vision: VisionInputs, trajectories: Sequence[Trajectory]) -> Parity:
    """Compare behavior logprobs with the trainer's on every engine-sampled token."""
    diffs = []
    with torch.no_grad():
        scores = trajectory_logprobs(model, vision, trajectories)
    for traj, score in zip(trajectories, scores):
        # engine-sampled tokens only: scripted policy turns (version -1) have no behavior logprobs
        mask = torch.tensor([v >= 0 for v in traj.versions[1:]], dtype=torch.bool)
        behavior = torch.tensor(traj.behavior_logprobs[1:])
        diffs.append((score.logprobs.cpu() - behavior)[mask].abs())
    d = torch.cat(diffs)
    return Parity(float(d.mean()), float(d.max()), int(d.numel()))
