"""Scaling at equal compute: each strategy's accuracy against the tokens it spends per question.

A strategy that picks one of k samples spends the k samples' generated tokens; one that
selects by a verifier also spends, for each of the k, what verifying it cost (the tokens its
engine read anew and wrote: ``vlrl.eval.run.verify_tokens``). Per question the expected
spend over k-subsets is k times the mean over its samples, so a strategy's point at k is
(k x mean generated [+ k x mean verification] tokens, averaged over questions, its accuracy).
Majority voting (maj@k) spends only the generated tokens; best-of-k by verifier V also V's.
The question that decides which to use: at the budget of maj@k, does any verifier-based
selection that costs no more do better?
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence


def mean_tokens(records: Sequence[dict[str, Any]], judge: str | None = None) -> float:
    """Over questions, the mean over a question's judged samples of its generated tokens (``judge`` None) or of
    the verification tokens ``judge`` spent on it; a dropped sample spent nothing that is counted."""
    per_question = []
    for record in records:
        kept = [s for s in record["samples"] if "dropped" not in s]
        if judge is None:
            spent = [s.get("policy_tokens", 0) for s in kept]
        else:
            spent = [s.get("verify_tokens", {}).get(judge, 0) for s in kept]
        per_question.append(statistics.fmean(spent) if spent else 0.0)
    return statistics.fmean(per_question) if per_question else 0.0


def compute_curves(records: Sequence[dict[str, Any]], figures: dict[str, dict[str, Any]], ks: Sequence[int],
                   judges: Sequence[str]) -> dict[str, list[dict[str, float]]]:
    """Strategy (``maj``, ``bestof_V``) -> its points {k, tokens per question, accuracy} over ``ks``."""
    generated = mean_tokens(records)
    curves = {"maj": [{"k": k, "tokens": k * generated, "accuracy": figures[f"maj@{k}"]["value"]} for k in ks]}
    for judge in judges:
        cost = generated + mean_tokens(records, judge)
        curves[f"bestof_{judge}"] = [{"k": k, "tokens": k * cost, "accuracy": figures[f"bestof@{k}_{judge}"]["value"]}
                                     for k in ks]
    return curves


def majority_vs_verifiers(curves: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """At each maj@k budget: the best verifier-based selection costing no more (None: none is that cheap), and
    majority's margin over it (positive: majority voting wins at that budget). A "selection" of one sample
    selects nothing (it is one sample, verified for nothing), so best-of-k counts from k = 2."""
    rows = []
    for point in curves["maj"]:
        affordable = [(name, p) for name, points in curves.items() if name != "maj" for p in points
                      if p["k"] >= 2 and p["tokens"] <= point["tokens"] + 1e-9 and p["accuracy"] is not None]
        best = max(affordable, key=lambda item: item[1]["accuracy"], default=None)
        rows.append({"k": point["k"], "budget": point["tokens"], "majority": point["accuracy"],
                     "best_verifier": None if best is None else {"strategy": best[0], "k": best[1]["k"],
                                                                 "accuracy": best[1]["accuracy"]},
                     "margin": None if best is None or point["accuracy"] is None
                     else point["accuracy"] - best[1]["accuracy"]})
    return rows


def verdict(rows: Sequence[dict[str, Any]]) -> str:
    """The report's sentence: at which budgets majority voting beats verifier-based selection, and by how much."""
    compared = [r for r in rows if r["margin"] is not None]
    if not compared:
        return "No verifier-based selection costs as little as majority voting at any budget here."
    wins = [r for r in compared if r["margin"] > 0]
    losses = [r for r in compared if r["margin"] < 0]
    budgets = ", ".join(f"{r['budget']:.0f} (k = {r['k']}: {100 * r['margin']:+.1f} points)" for r in wins)
    said = (f"Majority voting beats every verifier-based selection of no larger budget at {len(wins)} of "
            f"{len(compared)} budgets" + (f": {budgets}" if wins else "") + ".")
    if losses:
        said += " A verifier-based selection does better at " + ", ".join(
            f"{r['budget']:.0f} ({r['best_verifier']['strategy']} at k = {r['best_verifier']['k']}: "
            f"{-100 * r['margin']:+.1f} points)" for r in losses) + "."
    return said
