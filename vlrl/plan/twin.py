"""The twin: the real rollout manager and overlap scheduler, on cost-model parts and a simulated clock.

Each simulated step is the recipe's (``vlrl.recipes.train.rl_step``) with the model work
replaced by its cost: collect (``RolloutManager.rollout`` for sync, ``OverlapScheduler.step``
otherwise, with the cost engine, the cost environment and, when asked, the real
``Verifier`` on the cost engine), then the update (``Costs.update_s`` of the trained
trajectories as the trainer cuts them into micro-batches, slowed by the engine beside it
under ``keep_decoding``) and the weight push (``Costs.sync_s``), during which the engine
decodes only under ``keep_decoding``. Lengths come from a ``Script``, so the twin faces the
work a measured run faced; its figures are the ones the recipe logs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from vlrl.clock import now
from vlrl.plan.costs import Costs, update_positions
from vlrl.plan.engine import CostEngine, Script
from vlrl.plan.env import CostEnv
from vlrl.rewards.verifier import Verifier
from vlrl.rollout.manager import RolloutManager
from vlrl.rollout.scheduler import OverlapScheduler
from vlrl.types import Sample, SamplingParams, Score


@dataclass(frozen=True)
class Plan:
    """What to simulate: a schedule of the recipe, the batch, and the shape of a trajectory."""

    schedule: Literal["sync", "async", "overlap"]
    groups: int  # B: groups trained per step
    group_size: int
    extra: int = 0  # Δ (overlap)
    keep_decoding: bool = False  # overlap: the engine decodes through the update (disaggregated)
    max_staleness: int | None = None
    verifier: bool = False  # the policy judges each answer on its own engine
    chunk_tokens: int = 0  # verifier streaming (schedule async or overlap)
    max_tokens: int = 1024  # per policy turn
    prompt_tokens: int = 300
    observation_tokens: int = 60
    slots: int = 0  # the engine's batch, the bubble's unit (0: every request in flight)
    tick: int = 1  # the cost engine's decode steps per delta at most (see ``CostEngine``)
    tool_workers: int = 0  # the sandbox's workers, tool calls queue for them (0: one per call)
    micro_batch_tokens: int = 8192  # the trainer's micro-batches (``optim.micro_batch_tokens``)

    def __post_init__(self) -> None:
        if self.schedule not in ("sync", "async", "overlap"):
            raise ValueError(f"schedule must be sync, async or overlap, got {self.schedule!r}")
        if self.keep_decoding and self.schedule != "overlap":
            raise ValueError("keep_decoding needs schedule overlap")

    @property
    def capacity(self) -> int:
        return self.slots or (self.groups + self.extra) * self.group_size


@dataclass
class TwinStep:
    """One simulated step's figures (the recipe's names without the namespace)."""

    step_s: float
    rollout_s: float
    update_s: float
    engine_busy_fraction: float
    bubble_ratio: float
    trained: list[str]  # the trained groups' trajectory-id prefixes, oldest first
    staleness: dict[int, int] = field(default_factory=dict)  # steps carried -> trained groups
    tokens: int = 0  # trained tokens (prompt, observations and answer)
    dropped: int = 0  # trajectories dropped (a staleness cap)
    policy_tokens: int = 0  # trained tokens the policy wrote
    engine: dict[str, float] = field(default_factory=dict)  # the engine's counters (``CostEngine.take_stats``)


async def simulate_steps(plan: Plan, costs: Costs, script: Script, steps: int, tokenizer: Any,
                         eos_id: int) -> list[TwinStep]:
    """``steps`` steps of ``plan`` on the simulated clock (run it under ``vlrl.plan.clock.simulate``)."""
    engine = CostEngine(costs, script, eos_id, shared_prompt=plan.prompt_tokens, max_batch=plan.slots, tick=plan.tick)
    env = CostEnv(costs, script, plan.prompt_tokens, plan.observation_tokens, plan.tool_workers)
    verifier = Verifier(engine, tokenizer) if plan.verifier else None
    manager = RolloutManager(engine, env, tokenizer, _reward, SamplingParams(max_tokens=plan.max_tokens),
                             plan.group_size, "sync" if plan.schedule == "sync" else "async", verifier,
                             0.5 if verifier else 0.0, plan.chunk_tokens)
    scheduler = OverlapScheduler(manager, plan.groups, plan.extra, plan.max_staleness,
                                 keep_decoding=plan.keep_decoding) if plan.schedule == "overlap" else None
    drawn = (Sample(f"q{k}", f"question {k}", [], ["0"]) for k in range(10**9))
    out: list[TwinStep] = []
    for step in range(steps):
        began = now()
        if scheduler is None:
            result = await manager.rollout([next(drawn) for _ in range(plan.groups)], seed=step, tag=f"s{step}")
            staleness: Counter = Counter({0: len(result.groups)})
        else:
            result, stats = await scheduler.step(lambda n: [next(drawn) for _ in range(n)], seed=step,
                                                 tag=f"s{step}")
            staleness = stats.staleness
        rolled = now()
        lengths = [len(t.token_ids) for t in result.trajectories]
        positions = update_positions(lengths, plan.micro_batch_tokens, costs.padded_update)
        await asyncio.sleep(costs.update_s(positions, plan.keep_decoding) + costs.sync_s if result.groups else 0.0)
        await engine.update_weights({}, engine.version + 1)
        end = now()
        close = end if plan.keep_decoding else rolled
        figures = manager.timeline.engine_figures(began, close, end, plan.capacity)
        out.append(TwinStep(end - began, rolled - began, end - rolled, figures["engine_busy_fraction"],
                            figures["bubble_ratio"], [g.trajectories[0].id.rsplit("-", 1)[0] for g in result.groups],
                            dict(staleness), sum(lengths), sum(result.dropped.values()),
                            sum(sum(t.loss_mask) for t in result.trajectories), engine.take_stats()))
        manager.timeline.prune(end)
    if scheduler is not None:
        await scheduler.close()
    await engine.close()
    return out


def _reward(text: str, answers: Sequence[str]) -> Score:
    return Score(0.0)
