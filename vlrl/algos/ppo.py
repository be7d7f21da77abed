"""PPO's critic side: generalized advantage estimation over policy tokens, and the clipped value loss.

The policy loss is GRPO's (``vlrl.algos.grpo.clipped_policy_loss``) with per-token
advantages. In a multi-turn trajectory the tool observations are the environment's
transition, not actions: GAE runs over the policy tokens only, so the token after the
last one of a turn is the first one of the next turn.
"""

from __future__ import annotations

import torch

from vlrl.algos.grpo import aggregate


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns, (B, T) each, zero where ``mask`` is 0.

    Over the policy tokens t_1 < t_2 < ... < t_n of a row (the mask's ones), with V = 0
    after the last:
        delta_k = r_k + gamma * V_{k+1} - V_k
        A_k     = delta_k + gamma * lam * A_{k+1}
        R_k     = A_k + V_k                      (the critic's target)
    ``rewards`` holds the reward on the token where it is earned (the outcome reward on
    the last policy token; a KL penalty on every token, if used).
    """
    if not rewards.shape == values.shape == mask.shape:
        raise ValueError(f"rewards, values and mask must have one shape, got {rewards.shape}, {values.shape}, "
                         f"{mask.shape}")
    advantages = torch.zeros_like(values)
    for row in range(values.shape[0]):
        steps = mask[row].nonzero().flatten()
        running, next_value = 0.0, 0.0
        for t in reversed(steps.tolist()):
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            running = delta + gamma * lam * running
            advantages[row, t] = running
            next_value = values[row, t]
    returns = (advantages + values) * mask
    return advantages, returns


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float = 0.2) -> torch.Tensor:
    """0.5 * max((V - R)^2, (V_old + clip(V - V_old, -clip, clip) - R)^2), token-mean over the mask.

    The clipped branch keeps the critic from moving further than ``clip`` from the values
    the advantages were computed with, as the ratio clip does for the policy.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return aggregate(per_token, mask, "token-mean")
