"""Inference-time scaling metrics, per question, from N sampled answers and their verifier scores.

Every function here reads one question (pass@k, maj@k, best-of-k, weighted majority) or
one pool of (score, correct) pairs (the verifier's quality); ``vlrl.eval.report`` averages
them over questions and puts a bootstrap interval on each. Conventions shared by all:

- a question's samples are indexed 0..N-1 in the order they were drawn; a sample that
  gave no answer (or whose trajectory failed) counts as a wrong answer and casts no vote;
- answers are grouped into *clusters* of answers the task's reward treats as the same
  (``cluster_answers``), so "62", "62%" and "about 62" vote together under a lenient
  reward and apart under exact match;
- every "-of-k" figure is the expected value over the C(N, k) subsets of k samples:
  computed exactly when there are at most ``max_subsets`` of them, else estimated on
  ``max_subsets`` subsets drawn uniformly with a seeded generator;
- ties are broken toward the lowest sample index: the tied cluster whose first member
  in the subset was drawn first, the tied candidate drawn first. Sampling order is
  random, so this is an unbiased tie-break that stays reproducible.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Callable, Sequence

import numpy as np

Subset = tuple[int, ...]


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct), c of n correct.

    The unbiased estimator of Chen et al. (2021): 1 - C(n - c, k) / C(n, k).
    """
    _check_k(n, k)
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: c must be in [0, n={n}], got {c}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def cluster_answers(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> list[int]:
    """Each answer's cluster: the index of the first earlier answer it matches, else its own index.

    ``same(answer, representative)`` is the reward's comparison. Each cluster is
    represented by its first member, and an answer joins the first cluster whose
    representative it matches, so a non-transitive comparison (numbers within 5%) still
    gives one deterministic grouping. ``None`` (no answer) gets -1 and joins nothing.
    """
    clusters: list[int] = []
    representatives: list[int] = []
    for i, answer in enumerate(answers):
        if answer is None:
            clusters.append(-1)
            continue
        home = next((r for r in representatives if same(answer, answers[r])), None)  # type: ignore[arg-type]
        if home is None:
            representatives.append(i)
            home = i
        clusters.append(home)
    return clusters


def majority_vote(subset: Subset, clusters: Sequence[int], weights: Sequence[float] | None = None) -> int | None:
    """The sample whose cluster wins the (weighted) plurality vote among ``subset``; None if nobody answered.

    The winner is reported as the first sample of ``subset`` in the winning cluster, so
    its correctness is the vote's. Weights default to 1 (plain majority).
    """
    votes: dict[int, float] = {}
    first: dict[int, int] = {}
    for i in subset:
        cluster = clusters[i]
        if cluster < 0:
            continue
        votes[cluster] = votes.get(cluster, 0.0) + (1.0 if weights is None else weights[i])
        first.setdefault(cluster, i)
    if not votes:
        return None
    return first[min(votes, key=lambda c: (-votes[c], first[c]))]


def best_of(subset: Subset, scores: Sequence[float]) -> int:
    """The sample of ``subset`` the verifier scores highest (ties: the earliest drawn)."""
    return min(subset, key=lambda i: (-scores[i], i))


def subsets(n: int, k: int, max_subsets: int, seed: int = 0) -> list[Subset]:
    """All k-subsets of range(n) (sorted) when there are at most ``max_subsets``, else that many drawn at random."""
    _check_k(n, k)
    if max_subsets < 1:
        raise ValueError(f"max_subsets must be >= 1, got {max_subsets}")
    if math.comb(n, k) <= max_subsets:
        return list(itertools.combinations(range(n), k))
    rng = random.Random(seed * 1_000_003 + n * 1_009 + k)
    return [tuple(sorted(rng.sample(range(n), k))) for _ in range(max_subsets)]


def maj_at_k(correct: Sequence[float], clusters: Sequence[int], k: int, max_subsets: int = 1000,
             seed: int = 0) -> float:
    """Expected correctness of the plurality answer of k samples (no answer in the subset: wrong)."""
    return _expected(correct, k, max_subsets, seed, lambda s: majority_vote(s, clusters))


def weighted_maj_at_k(correct: Sequence[float], clusters: Sequence[int], scores: Sequence[float], k: int,
                      max_subsets: int = 1000, seed: int = 0) -> float:
    """maj@k with each vote weighted by the verifier's score of its sample."""
    return _expected(correct, k, max_subsets, seed, lambda s: majority_vote(s, clusters, scores))


def best_of_k(correct: Sequence[float], scores: Sequence[float], k: int, max_subsets: int = 1000,
              seed: int = 0) -> float:
    """Expected correctness of the sample the verifier scores highest among k."""
    if len(scores) != len(correct):
        raise ValueError(f"best-of-k: {len(scores)} scores for {len(correct)} samples")
    return _expected(correct, k, max_subsets, seed, lambda s: best_of(s, scores))


def _expected(correct: Sequence[float], k: int, max_subsets: int, seed: int,
              pick: Callable[[Subset], int | None]) -> float:
    chosen = [pick(s) for s in subsets(len(correct), k, max_subsets, seed)]
    return sum(0.0 if i is None else float(correct[i]) for i in chosen) / len(chosen)


def _check_k(n: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k:
        raise ValueError(f"k = {k} needs at least k samples per question, got N = {n}")


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")
    ks = [1 << p for p in range(n.bit_length()) if 1 << p <= n]
    return ks if ks[-1] == n else ks + [n]


# ------------------------------------------------------------------ the verifier's own quality


def auroc(scores: Sequence[float], labels: Sequence[float]) -> float | None:
    """P(a random right answer scores above a random wrong one), ties counting one half.

    Computed from ranks (Mann-Whitney U, tied scores sharing their average rank); None
    when every answer is right or every one is wrong (no pair to compare).
    """
    if len(scores) != len(labels):
        raise ValueError(f"auroc: {len(scores)} scores for {len(labels)} labels")
    right = np.asarray(labels, dtype=float) >= 0.5
    positives = int(right.sum())
    negatives = len(right) - positives
    if positives == 0 or negatives == 0:
        return None
    _, at, counts = np.unique(np.asarray(scores, dtype=float), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[at]  # 1-based, averaged over each run of equal scores
    return float((ranks[right].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def accuracy_at(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.5) -> float | None:
    """Share of answers the verifier judges right: score >= threshold exactly when the answer is right."""
    if not scores:
        return None
    return sum((s >= threshold) == (y >= 0.5) for s, y in zip(scores, labels)) / len(scores)


def expected_calibration_error(scores: Sequence[float], labels: Sequence[float], bins: int = 10) -> float | None:
    """ECE over ``bins`` equal-width bins of the score: sum over bins of |bin| / total x |mean score - accuracy|.

    A score of exactly 1.0 falls in the last bin.
    """
    if not scores:
        return None
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    filled: dict[int, list[tuple[float, float]]] = {}
    for s, y in zip(scores, labels):
        filled.setdefault(min(int(s * bins), bins - 1), []).append((s, float(y >= 0.5)))
    return sum(len(b) * abs(sum(s for s, _ in b) / len(b) - sum(y for _, y in b) / len(b))
               for b in filled.values()) / len(scores)


def roc_curve(scores: Sequence[float], labels: Sequence[float]) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) as the threshold falls through every distinct score."""
    positives = sum(1 for y in labels if y >= 0.5)
    negatives = len(labels) - positives
    fpr, tpr = [0.0], [0.0]
    tp = fp = 0
    pairs = sorted(zip(scores, labels), key=lambda p: -p[0])
    for at, (s, y) in enumerate(pairs):
        tp, fp = tp + (y >= 0.5), fp + (y < 0.5)
        if at + 1 == len(pairs) or pairs[at + 1][0] != s:
            fpr.append(fp / negatives if negatives else 0.0)
            tpr.append(tp / positives if positives else 0.0)
    return fpr, tpr
