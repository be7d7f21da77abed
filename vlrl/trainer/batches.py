"""What the trainer learns from, and how it is cut: training items, micro-batches, shares per rank, padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch

from vlrl.model.batching import padded_runs
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


# the most of a micro-batch that may be padding: a forward more costs little on a CPU beside padded positions (the
# forward and backward of `longtail-cot`'s trajectories, 16,384-token budget: 3.3-4.4 s cut by the budget alone,
# 1.9-2.3 s with at most a third padding, 1.5-1.9 s with a tenth; 2026-12-06, 2 vCPUs)
MICRO_BATCH_PADDING = 0.1

# a micro-batch of a rank that has run out of its share (sharded): two prompt tokens, nothing to learn
FILLER = Trajectory("filler", "filler", [Segment("prompt", (0, 0))])


def length(item: Any) -> int:
    """Tokens of a trajectory or of a TrainItem's trajectory."""
    return len(getattr(item, "trajectory", item).token_ids)


def micro_batches(items: Sequence[T], budget: int, size: Callable[[T], int] = length) -> list[list[T]]:
    """``items`` (trajectories or TrainItems; anything of a ``size``) cut into the trainer's micro-batches: sorted
    runs of at most ``budget`` padded tokens, a tenth of them padding at most (``padded_runs``), so a long tail of
    lengths does not pad short answers to long ones. An item longer than the budget goes alone (it cannot be split
    without breaking its images)."""
    return padded_runs(items, budget, size, MICRO_BATCH_PADDING)


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
