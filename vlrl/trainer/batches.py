"""What the trainer learns from, and how it is cut: training items, micro-batches, shares per rank, padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch

from vlrl.types import Segment, Trajectory

T = TypeVar("T")


@dataclass(frozen=True)
class TrainItem:
    """A trajectory and its advantage: one number for all its policy tokens (GRPO), or one per
    token aligned with ``loss_mask[1:]`` (PPO's GAE)."""

    trajectory: Trajectory
    advantage: float | torch.Tensor
    old_logprobs: torch.Tensor | None = None  # pi_old per token (L - 1); None: this step's own forward, detached
    ref_logprobs: torch.Tensor | None = None  # pi_ref per token (L - 1), streamed while it decoded; None: computed


# a micro-batch of a rank that has run out of its share (sharded): two prompt tokens, nothing to learn
FILLER = Trajectory("filler", "filler", [Segment("prompt", (0, 0))])


def length(item: Any) -> int:
    """Tokens of a trajectory or of a TrainItem's trajectory."""
    return len(getattr(item, "trajectory", item).token_ids)


def micro_batches(items: Sequence[T], budget: int) -> list[list[T]]:
    """``items`` (trajectories or TrainItems) from shortest to longest, cut into consecutive runs whose padded size
    stays within ``budget`` tokens: with long-tailed lengths, a short answer is not padded to a long one's length.
    An item longer than the budget goes alone (it cannot be split without breaking its images).
    """
    batches: list[list[T]] = []
    current: list[T] = []
    longest = 0
    for item in sorted(items, key=length):
        n = length(item)
        if current and max(longest, n) * (len(current) + 1) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def split_by_tokens(items: Sequence[T], lengths: Sequence[int], ranks: int) -> list[list[T]]:
    """``items`` (of ``lengths`` tokens) dealt to ``ranks`` shares of near-equal tokens: longest first, each to the
    lightest share.

    Each share keeps the batch's order, so micro-batching within a share is as in one process.
    """
    loads = [0] * ranks
    owner: dict[int, int] = {}
    for i in sorted(range(len(items)), key=lambda i: -lengths[i]):
        rank = loads.index(min(loads))
        owner[i] = rank
        loads[rank] += lengths[i]
    return [[items[i] for i in range(len(items)) if owner[i] == rank] for rank in range(ranks)]


def pad(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right-pad 1-D tensors with zeros into one (B, T) tensor."""
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
