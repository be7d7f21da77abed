"""Which rows of different lengths share one padded forward (the engine's prefills, the trainer's micro-batches)."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
MAX_PADDING = 1 / 3  # of a forward's positions; a long tail of lengths otherwise pads short rows to long ones


def padded_runs(items: Sequence[T], budget: int, size: Callable[[T], int],
                max_padding: float = MAX_PADDING) -> list[list[T]]:
    """``items`` from shortest to longest, cut into consecutive runs that each go through one padded forward: a run's
    rows, padded to its longest, take at most ``budget`` positions, at most ``max_padding`` of them padding. An item
    longer than the budget goes alone.

    Packing the rows into one sequence would pad nothing, but SDPA then needs a block-diagonal mask as large as
    the square of the whole run; sorted runs with bounded padding keep the plain causal forward.
    """
    if budget < 1 or not 0 <= max_padding < 1:
        raise ValueError(f"need budget >= 1 and 0 <= max_padding < 1, got {budget} and {max_padding}")
    runs: list[list[T]] = []
    run: list[T] = []
    real = 0
    for item in sorted(items, key=size):
        n = size(item)
        padded = (len(run) + 1) * n  # sorted: the newcomer is the longest
        if run and (padded > budget or padded - (real + n) > max_padding * padded):
            runs.append(run)
            run, real = [], 0
        run.append(item)
        real += n
    if run:
        runs.append(run)
    return runs
