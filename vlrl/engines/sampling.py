"""Next-token sampling shared by the HF engine (logits --> token, raw logprob per row), stop strings, and
continued requests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from vlrl.types import SamplingParams


def sample_next(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    suppress: Sequence[torch.Tensor],
) -> tuple[list[int], list[float]]:
    """Sample one token per row of ``logits`` (B, V).

    The returned logprob is the raw model log-probability of the chosen token
    (temperature 1, nothing suppressed) — the quantity the trainer recomputes. Sampling
    itself applies suppression, temperature, top-k and top-p (in that order); a
    temperature of 0 is greedy.
    """
    logits = logits.float()
    raw = torch.log_softmax(logits, dim=-1)
    tokens: list[int] = []
    for row, (p, gen, banned) in enumerate(zip(params, generators, suppress)):
        scores = logits[row].clone()
        scores[banned] = float("-inf")
        if p.temperature == 0:
            tok = int(torch.argmax(scores))
        else:
            scores = scores / p.temperature
            if p.top_k > 0:
                kth = torch.topk(scores, min(p.top_k, scores.numel())).values[-1]
                scores[scores < kth] = float("-inf")
            probs = torch.softmax(scores, dim=-1)
            if p.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                # keep the smallest prefix whose mass reaches top_p (always at least one token)
                drop = torch.cumsum(sorted_p, dim=-1) - sorted_p >= p.top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            tok = int(torch.multinomial(probs, 1, generator=gen))
        tokens.append(tok)
    logprobs = raw[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()
    return tokens, logprobs


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
