"""GRPO: group-relative advantages and the clipped policy-gradient loss, with its common variants.

Notation, per trajectory i of a group of G answers to one prompt, per generated token t:
    r_i              the trajectory's scalar reward
    A_i              its advantage, shared by all its policy tokens
    rho_{i,t}        = exp(log pi_theta(y_t | y_<t) - log pi_old(y_t | y_<t)), the importance ratio
    m_{i,t}          the loss mask: 1 on tokens the policy wrote, 0 on prompt and tool-observation tokens
Only tokens with m = 1 carry gradient; observations are the world's, not the policy's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vlrl.types import Aggregation, KLEstimator


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-6,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """A_i = (r_i - mean_j r_j) / (std_j r_j + eps) within each group (row of ``rewards``, shape (groups, G)).

    ``scale=False`` drops the division by the std (Dr.GRPO: the std re-weights easy and
    hard prompts and biases the update towards them). The std is Bessel-corrected, as in
    TRL and verl. A group whose rewards are all equal gets A = 0 (no signal). ``valid``
    (bool, the shape of ``rewards``) leaves trajectories out of their group's mean and std
    (over-turn masking); they get A = 0, and so does a group with fewer than two left.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, G) with G >= 2, got shape {tuple(rewards.shape)}")
    if valid is None:
        centred = rewards - rewards.mean(dim=1, keepdim=True)
        return centred / (rewards.std(dim=1, keepdim=True) + eps) if scale else centred
    weight = valid.to(rewards.dtype)
    n = weight.sum(dim=1, keepdim=True)
    mean = (rewards * weight).sum(dim=1, keepdim=True) / n.clamp(min=1)
    centred = (rewards - mean) * weight * (n >= 2)
    if not scale:
        return centred
    std = ((centred ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    return centred / (std + eps)


def informative_groups(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Bool per group: its rewards (those ``valid``) are not all equal (a group that agrees teaches nothing; DAPO
    filters them)."""
    if valid is None:
        return (rewards != rewards[:, :1]).any(dim=1)
    low = torch.where(valid, rewards, torch.inf).min(dim=1).values
    high = torch.where(valid, rewards, -torch.inf).max(dim=1).values
    return high > low


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: Aggregation, total: float | None = None) -> torch.Tensor:
    """Reduce per-token ``values`` (B, T) over the tokens where ``mask`` is 1.

    ``total`` replaces the denominator (tokens for ``token-mean``, sequences otherwise) so
    that the losses of micro-batches add up to the loss of their whole batch.

    - ``token-mean``: sum over all tokens / number of tokens — every token weighs the same,
      so long answers weigh more (DAPO's choice).
    - ``seq-mean-token-mean``: mean over sequences of each sequence's token mean — every
      sequence weighs the same (the original GRPO).
    - ``seq-mean-token-sum``: mean over sequences of each sequence's token sum — no length
      normalization at all (Dr.GRPO: the per-sequence mean biases towards short wrong answers).
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / (total if total is not None else mask.sum().clamp(min=1))
    per_sequence = (values * mask).sum(dim=1)
    if mode == "seq-mean-token-mean":
        per_sequence = per_sequence / mask.sum(dim=1).clamp(min=1)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"unknown loss aggregation {mode!r}; choose token-mean, seq-mean-token-mean, "
                         "seq-mean-token-sum")
    return per_sequence.sum() / (total if total is not None else per_sequence.shape[0])


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: float  # share of policy tokens whose ratio was clipped (the update went that far)
    ratio_mean: float
    approx_kl: float  # mean of log(pi_old / pi_theta) over policy tokens: how far this step moved


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
                        aggregation: Aggregation = "token-mean",
                        weights: torch.Tensor | None = None, total: float | None = None,
                        dual_clip: float = 0.0) -> PolicyLoss:
    """The PPO / GRPO surrogate, per token:

        L_{i,t} = -min( rho * A,  clip(rho, 1 - clip_low, 1 + clip_high) * A )

    and with ``dual_clip`` = c > 1, where A < 0 (dual-clip PPO, Ye et al. 2020; verl's
    ``clip_ratio_c``, VTool-R1's 3.0): L_{i,t} = min(L_{i,t}, -c * A), so a token whose ratio
    has run far above 1 under a negative advantage cannot push the loss without bound.
    ``advantages`` is (B,) (one per trajectory, GRPO) or (B, T) (per token, PPO with GAE).
    ``clip_high > clip_low`` is DAPO's clip-higher: a rare token may grow more before the
    clip stops it, which keeps entropy from collapsing. ``weights`` (B, T) multiplies each
    token's loss: the importance weights of ``off_policy_weights``. ``total``: see
    ``aggregate``.
    """
    if dual_clip and dual_clip <= 1.0:
        raise ValueError(f"the dual clip must be > 1 (or 0: off), got {dual_clip}")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    if dual_clip:
        advantages = advantages.expand_as(per_token)
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -dual_clip * advantages), per_token)
    if weights is not None:
        per_token = per_token * weights
    loss = aggregate(per_token, mask, aggregation, total)
    with torch.no_grad():
        m = mask.bool()
        n = m.sum().clamp(min=1)
        was_clipped = (clipped < unclipped) & m
        stats = (float(was_clipped.sum() / n), float(ratio[m].sum() / n), float((-log_ratio)[m].sum() / n))
    return PolicyLoss(loss, *stats)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman's estimators).

    With d = log pi_ref - log pi_theta:
    - ``k1`` = -d: unbiased, high variance, can be negative per token;
    - ``k3`` = exp(d) - d - 1: unbiased, always >= 0, lower variance (GRPO's choice).
    """
    d = ref_logprobs - logprobs
    if estimator == "k1":
        return -d
    if estimator == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1 or k3")


def off_policy_weights(trainer_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, cap: float = 2.0,
                       sampled: torch.Tensor | None = None, level: str = "token",
                       mode: str = "truncate") -> torch.Tensor:
    """Importance weights for tokens sampled from mu, not pi_old; (B, T) like the logprobs.

    mu is the engine that sampled (its recorded behavior logprobs); pi_old is the trainer's
    policy at the start of the step. They differ by numerics (engine vs trainer kernels) and,
    once the overlap scheduler defers trajectories, by versions. The ratio pi_old / mu is
    taken per token (``level`` "token") or per sequence, the product over its ``sampled``
    tokens (``level`` "sequence", broadcast over them). ``mode`` "truncate" gives
    min(ratio, cap) (truncated importance sampling: bounded variance); "mask" gives 1 where
    the ratio lies in [1 / cap, cap] and 0 elsewhere (masked importance sampling: what is too
    far off-policy is not trained on). Tokens outside ``sampled`` (scripted turns, padding)
    weigh 1. No gradient flows through the weights.
    """
    if cap < 1:
        raise ValueError(f"the importance-weight cap must be >= 1, got {cap}")
    if level not in ("token", "sequence") or mode not in ("truncate", "mask"):
        raise ValueError(f"importance level must be token or sequence and mode truncate or mask, got {level!r}, "
                         f"{mode!r}")
    sampled = torch.ones_like(trainer_logprobs) if sampled is None else sampled
    log_ratio = (trainer_logprobs - behavior_logprobs).detach() * sampled
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=-1, keepdim=True).expand_as(log_ratio)
    if mode == "truncate":
        weights = torch.exp(log_ratio.clamp(max=math.log(cap)))
    else:
        weights = (log_ratio.abs() <= math.log(cap)).to(trainer_logprobs.dtype)
    return weights * sampled + (1 - sampled)
