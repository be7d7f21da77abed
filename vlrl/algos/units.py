"""Algorithms as units chosen by ``algo.name``: each owns how a rollout becomes training items, its update
schedule and its loss, so the recipe and the trainer never ask which algorithm runs.

    GRPO: group-relative advantages (one per trajectory), the clipped surrogate;
    PPO:  a critic's values, GAE advantages per token whitened over the batch, the same
          surrogate, and a step of the critic on the clipped value loss.

Both update with ``epochs`` x ``mini_batches`` optimizer steps per rollout, pi_old fixed
before the first (``update_epochs``). Adding an algorithm (RLOO, REINFORCE++, ...) is a
unit here, its loss if it is new (``vlrl.algos.losses``), an entry in ``ALGORITHMS`` and
the name in ``AlgoConfig.name``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from vlrl.algos.critic import Critic
from vlrl.algos.grpo import group_advantages, informative_groups
from vlrl.algos.losses import ClippedSurrogate
from vlrl.algos.masks import LossMask, masked, over_turn
from vlrl.algos.ppo import gae
from vlrl.config import AlgoConfig
from vlrl.trainer.batches import TrainItem, pad
from vlrl.trainer.objective import Objective
from vlrl.trainer.policy import PolicyTrainer
from vlrl.trainer.streamed import StreamedScores
from vlrl.types import Group
from vlrl.vision import VisionInputs


@dataclass
class Batch:
    """A rollout made ready to learn from: its training items and figures of how they were made."""

    items: list[TrainItem]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class ValueBatch(Batch):
    """PPO's batch: also the critic's values the advantages came from, and its targets (one tensor per item)."""

    values: list[torch.Tensor] = field(default_factory=list)
    returns: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Setting:
    """What an algorithm is built from: its config section and the run's model (a critic starts from it)."""

    cfg: AlgoConfig
    seed: int
    model_dir: Path
    vision: VisionInputs
    dtype: torch.dtype
    device: str


class Algorithm(Protocol):
    """Rewarded groups --> a batch --> optimizer steps of the trainer (and of the algorithm's own models)."""

    objective: Objective  # the loss the trainer takes for this algorithm

    def prepare(self, groups: Sequence[Group]) -> Batch:
        """The step's whole groups as training items (on the trainer's thread: a critic may run)."""

    def update(self, trainer: PolicyTrainer, batch: Batch, step: int) -> dict[str, Any]:
        """Every optimizer step this rollout feeds; returns the update's figures."""

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of the algorithm's own (a critic's weights and optimizer), or None."""

    def streamed(self) -> list[StreamedScores]:
        """The models of its own whose per-token scores ``prepare`` reads and can be fed while trajectories decode
        (``algo.stream_chunk_tokens``): a critic's values."""

    def load_state(self, state: dict[str, Any] | None, where: str) -> None:
        """Restore ``state(``) from the checkpoint at ``where``."""


def update_epochs(trainer: PolicyTrainer, items: Sequence[TrainItem], epochs: int, mini_batches: int,
                  rng: random.Random) -> dict[str, Any]:
    """``epochs`` x ``mini_batches`` optimizer steps on one rollout, pi_old the policy before the first; figures
    averaged over the steps (the grad norm and the LR: the last's)."""
    if epochs * mini_batches == 1:
        return trainer.step(items)
    old = trainer.logprobs(items)
    items = [dataclasses.replace(it, old_logprobs=lp) for it, lp in zip(items, old)]
    runs: list[dict[str, float]] = []
    for _ in range(epochs):
        order = rng.sample(items, len(items))
        runs += [trainer.step(order[part]) for part in mini_batch_slices(len(order), mini_batches)]
    merged = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    return merged | {"grad_norm": runs[-1]["grad_norm"], "lr": runs[-1]["lr"], "optimizer_steps": len(runs),
                     "update_s": sum(r["update_s"] for r in runs)}


def mini_batch_slices(n: int, mini_batches: int) -> list[slice]:
    """``n`` items cut into at most ``mini_batches`` runs of equal size but the last, none empty. A step's items
    divide evenly when every group trains (the config checks it); dropped groups or masked trajectories can
    leave fewer or an uneven count."""
    size = max(1, -(-n // mini_batches))
    return [slice(k, k + size) for k in range(0, n, size)]


class GRPO:
    """Group-relative advantages, the clipped surrogate, no model of its own."""

    def __init__(self, setting: Setting):
        self.cfg, self.seed = setting.cfg, setting.seed
        self.objective = ClippedSurrogate(setting.cfg.loss)

    def prepare(self, groups: Sequence[Group]) -> Batch:
        items, uniform = grpo_items(groups, self.cfg.scale_advantages, self.cfg.drop_uniform_groups,
                                    self.cfg.loss_mask, self.cfg.mask_over_turns)
        return Batch(items, {"uniform_groups_dropped": uniform} | _masked_figures(groups, self.cfg))

    def update(self, trainer: PolicyTrainer, batch: Batch, step: int) -> dict[str, Any]:
        return update_epochs(trainer, batch.items, self.cfg.epochs, self.cfg.mini_batches, _rng(self.seed, step))

    def state(self) -> dict[str, Any] | None:
        return None

    def streamed(self) -> list[StreamedScores]:
        return []

    def load_state(self, state: dict[str, Any] | None, where: str) -> None:
        """GRPO keeps nothing of its own."""


class PPO(GRPO):
    """GRPO's surrogate and schedule with per-token advantages from a critic (GAE), which steps after the policy."""

    def __init__(self, setting: Setting):
        super().__init__(setting)
        critic_cfg = setting.cfg.critic
        self.critic = Critic(critic_cfg.model_path or setting.model_dir, setting.vision, critic_cfg,
                             setting.dtype).to(setting.device)

    def prepare(self, groups: Sequence[Group]) -> ValueBatch:
        items, values, returns = ppo_items(groups, self.critic, self.cfg.loss_mask, self.cfg.mask_over_turns)
        return ValueBatch(items, _masked_figures(groups, self.cfg), values=values, returns=returns)

    def update(self, trainer: PolicyTrainer, batch: Batch, step: int) -> dict[str, Any]:
        assert isinstance(batch, ValueBatch), "PPO updates from the batch its own prepare made"
        metrics = super().update(trainer, batch, step)
        return metrics | self.critic.step([it.trajectory for it in batch.items], batch.values, batch.returns)

    def state(self) -> dict[str, Any] | None:
        return {"weights": self.critic.state_dict(), "optimizer": self.critic.optimizer.state_dict()}

    def streamed(self) -> list[StreamedScores]:
        return [self.critic.streamed]

    def load_state(self, state: dict[str, Any] | None, where: str) -> None:
        if state is None:
            raise ValueError(f"{where}: the run uses a critic (PPO) but the checkpoint has none")
        self.critic.load_state_dict(state["weights"])
        self.critic.optimizer.load_state_dict(state["optimizer"])
        self.critic.version += 1


ALGORITHMS: dict[str, Callable[[Setting], Algorithm]] = {"grpo": GRPO, "ppo": PPO}  # algo.name -> its unit


def make_algorithm(setting: Setting) -> Algorithm:
    """The unit ``setting.cfg.name`` names."""
    if setting.cfg.name not in ALGORITHMS:
        raise ValueError(f"unknown algo.name {setting.cfg.name!r}; choose from {sorted(ALGORITHMS)}")
    return ALGORITHMS[setting.cfg.name](setting)


def grpo_items(groups: Sequence[Group], scale: bool = True, drop_uniform: bool = False,
               loss_mask: LossMask = "all_turns", mask_over_turns: bool = False) -> tuple[list[TrainItem], int]:
    """GRPO training items from whole groups, each trajectory masked by ``loss_mask`` (``vlrl.algos.masks``); an
    over-turn trajectory, when masked, leaves its group's statistics and the items. Returns the items and how many
    groups were dropped as uniform."""
    if not groups:
        return [], 0
    rewards = torch.tensor([[t.reward for t in g.trajectories] for g in groups], dtype=torch.float32)
    valid = torch.tensor([[not (mask_over_turns and over_turn(t)) for t in g.trajectories] for g in groups])
    everyone = bool(valid.all())
    advantages = group_advantages(rewards, scale=scale, valid=None if everyone else valid)
    keep = informative_groups(rewards, None if everyone else valid) if drop_uniform \
        else torch.ones(len(groups), dtype=torch.bool)
    items = [TrainItem(masked(t, loss_mask), float(a)) for g, row, ok, k in zip(groups, advantages, valid, keep) if k
             for t, a, v in zip(g.trajectories, row, ok) if v]
    return items, int((~keep).sum())


def ppo_items(groups: Sequence[Group], critic: Critic, loss_mask: LossMask = "all_turns",
              mask_over_turns: bool = False) -> tuple[list[TrainItem], list[torch.Tensor], list[torch.Tensor]]:
    """PPO training items: per-token advantages by GAE over the critic's values, whitened over the batch.

    Each trajectory is masked by ``loss_mask`` (a masked over-turn one is left out). The
    outcome reward sits on each trajectory's last trained token. Returns the items, the
    values they were computed with and the returns (the critic's targets).
    """
    trajs = [masked(t, loss_mask) for g in groups for t in g.trajectories if not (mask_over_turns and over_turn(t))]
    if not trajs:
        return [], [], []
    values = critic.values(trajs)
    masks = [torch.tensor(t.loss_mask[1:], dtype=torch.float32) for t in trajs]
    rewards = []
    for traj, mask in zip(trajs, masks):
        r = torch.zeros_like(mask)
        policy = mask.nonzero().flatten()
        if len(policy):
            r[policy[-1]] = float(traj.reward or 0.0)
        rewards.append(r)
    advantages, returns = gae(pad(rewards), pad(values), pad(masks), critic.cfg.gamma, critic.cfg.lam)
    mask = pad(masks)
    n = mask.sum().clamp(min=1)
    mean = (advantages * mask).sum() / n
    std = (((advantages - mean) * mask) ** 2).sum().div(n).sqrt()
    whitened = (advantages - mean) / (std + 1e-8) * mask
    items = [TrainItem(t, whitened[k, : len(masks[k])].clone()) for k, t in enumerate(trajs)]
    return items, values, [returns[k, : len(masks[k])].clone() for k in range(len(trajs))]


def _masked_figures(groups: Sequence[Group], cfg: AlgoConfig) -> dict[str, Any]:
    """How many trajectories over-turn masking left out of the step's update (when it is on)."""
    if not cfg.mask_over_turns:
        return {}
    return {"over_turn_masked": sum(over_turn(t) for g in groups for t in g.trajectories)}


def _rng(seed: int, step: int) -> random.Random:
    """The mini-batch order of ``step``: the same in a resumed run."""
    return random.Random(seed * 7_919 + step)
