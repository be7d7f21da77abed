"""The contract between the trainer and an algorithm's loss: what the trainer computes for a micro-batch, and
what the loss gives back.

The trainer runs the forwards (the policy's, the reference's) and lines every per-token
tensor up on one (B, T) grid, entry t - 1 of a row belonging to token t; the algorithm
(``vlrl.algos``) turns them into a loss. So a new loss touches ``vlrl.algos`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from vlrl.trainer.batches import TrainItem


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch's per-token tensors, each (B, T)."""

    logprobs: torch.Tensor  # log pi_theta of each token, with gradient
    old_logprobs: torch.Tensor  # log pi_old: the items' own, or this forward's, detached
    behavior_logprobs: torch.Tensor  # log mu: what the engine recorded when it sampled the token
    sampled: torch.Tensor  # 1 where the engine sampled the token (not a scripted turn), within the loss mask
    mask: torch.Tensor  # the loss mask: 1 on policy tokens
    advantages: torch.Tensor  # (B,) one per trajectory, or (B, T) one per token
    ref_logprobs: torch.Tensor | None  # log pi_ref, when the trainer holds a reference model


@dataclass(frozen=True)
class LossTerms:
    """A micro-batch's loss (already divided by the whole batch's normalizer) and its token-summed figures."""

    loss: torch.Tensor
    sums: dict[str, float]  # figure -> its sum over the micro-batch's policy tokens (the step reports sum / tokens)


class Objective(Protocol):
    """An algorithm's loss, as the trainer calls it (``vlrl.algos.losses``)."""

    figures: tuple[str, ...]  # the keys of ``LossTerms.sums``, the same on every rank and micro-batch
    needs_reference: bool  # the trainer must hold a frozen reference model (a KL term)

    def normalizer(self, items: Sequence[TrainItem]) -> float:
        """What the whole batch's loss is divided by (its policy tokens, or its trajectories)."""

    def __call__(self, inputs: LossInputs, total: float) -> LossTerms:
        """The loss of one micro-batch, divided by ``total`` so that micro-batches add up to the batch."""
