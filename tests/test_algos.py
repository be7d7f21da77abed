"""GRPO and PPO maths against values worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from vlrl.algos.grpo import (
    aggregate,
    clipped_policy_loss,
    group_advantages,
    informative_groups,
    kl_penalty,
    off_policy_weights,
)
from vlrl.algos.ppo import clipped_value_loss, gae


def test_group_advantages_normalize_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # group 0: mean 0.5, Bessel std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.86603
    a = group_advantages(rewards)
    assert torch.allclose(a[0], torch.tensor([0.86603, -0.86603, -0.86603, 0.86603]), atol=1e-4)
    assert torch.equal(a[1], torch.zeros(4))  # all equal: no signal
    assert torch.allclose(group_advantages(rewards, scale=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert informative_groups(rewards).tolist() == [True, False]
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))


def test_the_three_aggregations():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)  # 2.5
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx((6 / 3 + 4 / 1) / 2)  # 3
    assert aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)  # 5
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(values, mask, "mean")


def test_clipped_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    mask = torch.ones(1, 3)
    # A = +1: min(1.5, 1.2) = 1.2 (clipped); min(0.5, 0.8) = 0.5; min(1.1, 1.1) = 1.1 -> loss -(1.2+0.5+1.1)/3
    up = clipped_policy_loss(new, old, torch.tensor([1.0]), mask)
    assert up.loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1) / 3)
    assert up.clip_fraction == pytest.approx(1 / 3)
    assert up.ratio_mean == pytest.approx((1.5 + 0.5 + 1.1) / 3)
    # A = -1: min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8 (clipped); -1.1 -> loss (1.5+0.8+1.1)/3
    down = clipped_policy_loss(new, old, torch.tensor([-1.0]), mask)
    assert down.loss.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3) and down.clip_fraction == pytest.approx(1 / 3)
    # clip-higher: A = +1 may grow to 1.28
    dapo = clipped_policy_loss(new, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28)
    assert dapo.loss.item() == pytest.approx(-(1.28 + 0.5 + 1.1) / 3)
    # importance weights multiply each token's loss
    w = torch.tensor([[1.0, 2.0, 0.5]])
    weighted = clipped_policy_loss(new, old, torch.tensor([1.0]), mask, weights=w)
    assert weighted.loss.item() == pytest.approx(-(1.2 + 1.0 + 0.55) / 3)


def test_masked_tokens_neither_count_nor_get_gradient():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -0.7]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0, -0.4, -0.7]])
    mask = torch.tensor([[1, 0, 1, 0]])  # tokens 1 and 3: prompt / observation
    loss = clipped_policy_loss(logp, old, torch.tensor([0.7]), mask).loss
    loss.backward()
    assert logp.grad[0, 1] == 0 and logp.grad[0, 3] == 0 and logp.grad[0, 0] != 0
    moved = logp.detach().clone()
    moved[0, 1], moved[0, 3] = -9.0, 3.0  # change only the observation tokens' logprobs
    assert clipped_policy_loss(moved, old, torch.tensor([0.7]), mask).loss.item() == pytest.approx(loss.item())


def test_kl_estimators_by_hand():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    # d = log(0.25 / 0.5) = -ln 2; k1 = ln 2; k3 = e^d - d - 1 = 0.5 + ln 2 - 1
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_penalty(ref, ref, "k3").item() == 0


def test_truncated_importance_weights():
    w = off_policy_weights(torch.tensor([0.1, 1.0, -0.3]), torch.zeros(3), cap=2.0)
    assert torch.allclose(w, torch.tensor([math.exp(0.1), 2.0, math.exp(-0.3)]))
    with pytest.raises(ValueError, match="cap"):
        off_policy_weights(torch.zeros(1), torch.zeros(1), cap=0.5)


def test_sequence_and_masked_importance_weights_follow_the_whole_trajectory():
    # two trajectories of 3 tokens; the last token of the second is scripted (not sampled): it weighs 1
    trainer = torch.tensor([[0.3, 0.3, 0.3], [0.1, -0.05, 5.0]])
    behavior = torch.zeros(2, 3)
    sampled = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    seq = off_policy_weights(trainer, behavior, 2.0, sampled, level="sequence")
    # the first's ratio is exp(0.9) = 2.46 > 2: truncated to 2; the second's exp(0.05) on its sampled tokens
    assert torch.allclose(seq, torch.tensor([[2.0, 2.0, 2.0], [math.exp(0.05), math.exp(0.05), 1.0]]))
    masked = off_policy_weights(trainer, behavior, 2.0, sampled, level="sequence", mode="mask")
    assert torch.equal(masked, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    # per token, a ratio below 1 / cap is masked as well as one above cap
    token = off_policy_weights(torch.tensor([[0.5, -0.8, 0.8]]), torch.zeros(1, 3), 2.0, mode="mask")
    assert torch.equal(token, torch.tensor([[1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="level"):
        off_policy_weights(trainer, behavior, 2.0, level="trajectory")


def test_gae_skips_observation_tokens():
    values = torch.tensor([[0.5, 9.0, 0.4, 0.3]])  # token 1 is an observation: its value is never used
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[1, 0, 1, 1]])
    # gamma = lambda = 1: every advantage is R - V = 1 - V
    a, r = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(a, torch.tensor([[0.5, 0.0, 0.6, 0.7]])) and torch.allclose(r, torch.tensor([[1.0, 0, 1, 1]]))
    # gamma 0.9, lambda 0.8 over V = (.5, .4, .3), r = (0, 0, 1):
    # delta = (.9*.4 - .5, .9*.3 - .4, 1 - .3) = (-.14, -.13, .7); A2 = .7, A1 = -.13 + .72*.7 = .374,
    # A0 = -.14 + .72*.374 = .12928
    a, _ = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(a, torch.tensor([[0.12928, 0.0, 0.374, 0.7]]), atol=1e-6)


def test_clipped_value_loss_by_hand():
    values, old, returns, mask = (torch.tensor([[x]]) for x in (1.0, 0.5, 2.0, 1))
    # unclipped (1 - 2)^2 = 1; clipped V = 0.5 + 0.2 = 0.7 -> (0.7 - 2)^2 = 1.69; 0.5 * max = 0.845
    assert clipped_value_loss(values, old, returns, mask, clip=0.2).item() == pytest.approx(0.845)


def test_dual_clip_bounds_a_negative_advantages_loss():
    # per token (ratio, A): (5, -1) -> -min(-5, -1.2) = 5, bounded by 3 x |A| = 3; (5, +1) -> -min(5, 1.2) = -1.2;
    # (0.5, -1) -> -min(-0.5, -0.8) = 0.8 < 3: unchanged; (2, -0.5) -> -min(-1, -0.6) = 1.0 < 1.5: unchanged
    ratios = torch.tensor([[5.0, 5.0, 0.5, 2.0]])
    advantages = torch.tensor([[-1.0, 1.0, -1.0, -0.5]])
    mask = torch.ones(1, 4)
    args = (torch.log(ratios), torch.zeros(1, 4), advantages, mask, 0.2, 0.2, "seq-mean-token-sum")
    plain = clipped_policy_loss(*args).loss.item()
    dual = clipped_policy_loss(*args, dual_clip=3.0).loss.item()
    assert plain == pytest.approx(5 - 1.2 + 0.8 + 1.0)
    assert dual == pytest.approx(3 - 1.2 + 0.8 + 1.0)
    with pytest.raises(ValueError, match="dual clip must be > 1"):
        clipped_policy_loss(*args, dual_clip=0.5)
