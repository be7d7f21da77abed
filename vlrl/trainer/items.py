"""Rewarded groups --> training items: one advantage per trajectory (GRPO) or per token (PPO's GAE)."""

from __future__ import annotations

from typing import Sequence

import torch

from vlrl.algos.grpo import group_advantages, informative_groups
from vlrl.algos.ppo import gae
from vlrl.trainer.critic import Critic
from vlrl.trainer.policy import TrainItem, pad
from vlrl.types import Group


def grpo_items(groups: Sequence[Group], scale: bool = True, drop_uniform: bool = False) -> tuple[list[TrainItem], int]:
    """GRPO training items from whole groups; returns them and how many groups were dropped as uniform."""
    if not groups:
        return [], 0
    rewards = torch.tensor([[t.reward for t in g.trajectories] for g in groups], dtype=torch.float32)
    advantages = group_advantages(rewards, scale=scale)
    keep = informative_groups(rewards) if drop_uniform else torch.ones(len(groups), dtype=torch.bool)
    items = [TrainItem(t, float(a)) for g, row, k in zip(groups, advantages, keep) if k
             for t, a in zip(g.trajectories, row)]
    return items, int((~keep).sum())


def ppo_items(groups: Sequence[Group], critic: Critic) -> tuple[list[TrainItem], list[torch.Tensor],
                                                                 list[torch.Tensor]]:
    """PPO training items: per-token advantages by GAE over the critic's values, whitened over the batch.

    The outcome reward sits on each trajectory's last policy token. Returns the items, the
    values they were computed with and the returns (the critic's targets).
    """
    trajs = [t for g in groups for t in g.trajectories]
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
