"""Next-token sampling shared by the HF engine (logits --> token, raw logprob per row), stop strings, and
continued requests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from vlrl.types import SamplingParams

NUCLEUS_CANDIDATES = 1024  # top-p looks for its set among this many of a row's largest probabilities first


def sample_next(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    suppress: Sequence[torch.Tensor],
) -> tuple[list[int], list[float]]:
    """Sample one token per row of ``logits`` (B, V), every row's settings applied to the batch at once.

    The returned logprob is the raw model log-probability of the chosen token
    (temperature 1, nothing suppressed) — the quantity the trainer recomputes. Sampling
    itself applies suppression, temperature, top-k and top-p (in that order); a
    temperature of 0 is greedy. A row draws from its own generator when it has one, so a
    seeded request's tokens do not depend on the other rows of the batch.
    """
    logits = logits.float()
    rows, vocab = logits.shape
    scores = logits.clone()
    counts = torch.tensor([len(b) for b in suppress])
    if counts.sum() > 0:
        banned = torch.repeat_interleave(torch.arange(rows), counts), torch.cat([b.long() for b in suppress])
        scores[banned] = float("-inf")
    greedy_tokens = scores.argmax(-1)
    temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32)
    greedy = temperature == 0
    if greedy.all():
        return greedy_tokens.tolist(), raw_logprobs(logits, greedy_tokens)
    if (temperature[~greedy] != 1).any():
        scores /= torch.where(greedy, 1.0, temperature)[:, None]
    top_k = torch.tensor([p.top_k for p in params])
    if (top_k > 0).any():
        largest = torch.topk(scores, min(int(top_k.max()), vocab)).values
        kth = largest.gather(1, (top_k.clamp(1, largest.shape[1]) - 1)[:, None])
        scores.masked_fill_((scores < kth) & (top_k > 0)[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
    nucleus = (top_p < 1).nonzero().squeeze(-1)
    if len(nucleus):
        probs[nucleus] = nucleus_of(probs[nucleus], top_p[nucleus])
    # inverse CDF: one uniform draw per row, from the row's own generator when it has one
    cdf = probs.cumsum_(-1)
    draws = torch.rand(rows)
    for row, gen in enumerate(generators):
        if gen is not None:
            draws[row] = torch.rand((), generator=gen)
    # a draw in (0, 1] lands on the first token whose cumulative mass reaches it: never a token of mass 0
    points = (1.0 - draws) * cdf[:, -1]
    sampled = torch.searchsorted(cdf, points[:, None]).squeeze(-1).clamp_max(vocab - 1)
    tokens = torch.where(greedy, greedy_tokens, sampled)
    return tokens.tolist(), raw_logprobs(logits, tokens)


def raw_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> list[float]:
    """log softmax(``logits``) at ``tokens``, one per row."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1).tolist()


def nucleus_of(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``probs`` (R, V) with each row cut to the smallest set of its largest entries whose mass reaches that row's
    ``top_p`` (always at least one); the rest set to 0, the kept ones not renormalised.

    The set is found among the row's ``NUCLEUS_CANDIDATES`` largest entries, by a full sort
    only when those do not reach ``top_p`` (a flat distribution): sorting a 152k vocabulary
    per row was the sampler's largest cost.
    """
    largest, order = torch.topk(probs, min(NUCLEUS_CANDIDATES, probs.shape[-1]))
    if not bool((largest.sum(-1) >= top_p).all()):
        largest, order = torch.sort(probs, dim=-1, descending=True)
    drop = torch.cumsum(largest, dim=-1) - largest >= top_p[:, None]
    return torch.zeros_like(probs).scatter_(-1, order, largest.masked_fill(drop, 0.0))


def continued(sampling: SamplingParams, generated: Sequence[int], part: int) -> SamplingParams:
    """``sampling`` for the ``part``-th continuation of a request cut off after ``generated`` tokens.

    A request paused by the scheduler, or moved off an engine replica that died, goes on as
    a new request whose prompt ends with what it generated: its token budget is what is
    left, a seeded request gets a seed of its own per part so it does not replay its start,
    and its stop strings are matched across the cut (``stop_context``).
    """
    seed = None if sampling.seed is None else (sampling.seed + 7_919 * part) % 2**31
    context = (*sampling.stop_context, *generated)[-stop_window(sampling.stop):] if sampling.stop else ()
    return replace(sampling, max_tokens=sampling.max_tokens - len(generated), seed=seed, stop_context=context)


def stop_window(stops: Sequence[str]) -> int:
    """How many trailing tokens can hold a stop string (a byte-level token may be a quarter of a character)."""
    return max((len(s) for s in stops), default=0) * 4


def stop_reached(tokenizer: Any, sampling: SamplingParams, ids: Sequence[int], checked: int) -> int | None:
    """How many of ``ids`` it takes to complete a stop string of ``sampling``, or None.

    The text searched ends at each of ``ids[checked:]`` in turn (those before were searched
    already) and begins in ``sampling.stop_context`` when the request is a continuation.
    """
    if not sampling.stop:
        return None
    window = stop_window(sampling.stop)
    for end in range(checked + 1, len(ids) + 1):
        tail = [*sampling.stop_context, *ids[max(0, end - window) : end]][-window:]  # no copy of the whole output
        if any(s in tokenizer.decode(tail, skip_special_tokens=False) for s in sampling.stop):
            return end
    return None
