"""Scaling at equal compute: the tokens each strategy spends, and majority against verifiers, by hand."""

from __future__ import annotations

import pytest

from vlrl.config import EvalConfig
from vlrl.eval.compute import compute_curves, majority_vs_verifiers, mean_tokens, verdict
from vlrl.eval.report import build_report, write_report


def sample(right: bool, generated: int, verify: dict[str, int], scores: dict[str, float]) -> dict:
    return {"answer": "A" if right else "B", "correct": float(right), "cluster": 0 if right else 1, "tool_calls": 0,
            "tool_errors": 0, "policy_tokens": generated, "scores": scores, "verify_tokens": verify}


def records() -> list[dict]:
    # q0: generated 10 and 30 tokens; P(Yes) read 4 and 6, the written check 20 and 40
    q0 = [sample(True, 10, {"self": 4, "selfgen": 20}, {"self": 0.2, "selfgen": 1.0}),
          sample(False, 30, {"self": 6, "selfgen": 40}, {"self": 0.9, "selfgen": 0.0})]
    # q1: a dropped sample spends nothing that is counted
    q1 = [sample(True, 20, {"self": 5, "selfgen": 30}, {"self": 0.8, "selfgen": 1.0}),
          {"answer": None, "correct": 0.0, "dropped": "error", "cluster": -1}]
    return [{"index": i, "id": f"q{i}", "samples": s} for i, s in enumerate([q0, q1])]


def test_the_tokens_each_strategy_spends_by_hand():
    recs = records()
    assert mean_tokens(recs) == pytest.approx((20 + 20) / 2)  # q0: (10 + 30) / 2; q1: 20 (its dropped sample left out)
    assert mean_tokens(recs, "self") == pytest.approx((5 + 5) / 2)
    assert mean_tokens(recs, "selfgen") == pytest.approx((30 + 30) / 2)
    figures = {"maj@1": {"value": 0.5}, "maj@2": {"value": 0.75}}
    figures |= {f"bestof@{k}_{j}": {"value": v} for j, k, v in (
        ("self", 1, 0.5), ("self", 2, 0.5), ("selfgen", 1, 0.5), ("selfgen", 2, 1.0))}
    curves = compute_curves(recs, figures, [1, 2], ["self", "selfgen"])
    assert curves["maj"] == [{"k": 1, "tokens": 20.0, "accuracy": 0.5}, {"k": 2, "tokens": 40.0, "accuracy": 0.75}]
    assert [p["tokens"] for p in curves["bestof_self"]] == [25.0, 50.0]  # k x (20 generated + 5 verifying)
    assert [p["tokens"] for p in curves["bestof_selfgen"]] == [50.0, 100.0]  # k x (20 + 30)
    rows = majority_vs_verifiers(curves)
    # 40 tokens buy no selection (best-of-2 by P(Yes) costs 50; best-of-1 is one sample, no selection)
    assert [r["best_verifier"] for r in rows] == [None, None] and rows[1]["margin"] is None
    assert verdict(rows) == "No verifier-based selection costs as little as majority voting at any budget here."
    wide = dict(curves, maj=[*curves["maj"], {"k": 4, "tokens": 80.0, "accuracy": 0.7}])
    top = majority_vs_verifiers(wide)[2]  # 80 tokens buy best-of-2 by P(Yes) (50), not by writing (100)
    assert top["best_verifier"] == {"strategy": "bestof_self", "k": 2, "accuracy": 0.5}
    assert top["margin"] == pytest.approx(0.2)
    assert "at 1 of 1 budgets: 80 (k = 4: +20.0 points)" in verdict(majority_vs_verifiers(wide))
    cheap = {"maj": [{"k": 2, "tokens": 20.0, "accuracy": 0.4}], "bestof_x": [{"k": 2, "tokens": 20.0, "accuracy": 0.6}]}
    assert "A verifier-based selection does better at 20 (bestof_x at k = 2: +20.0 points)" in verdict(
        majority_vs_verifiers(cheap))


def test_the_report_carries_the_equal_compute_table_and_plot(tmp_path):
    report = build_report(records(), EvalConfig(samples=2, bootstrap=20), seconds=1.0)
    compute = report["equal_compute"]
    assert compute["generated_tokens"] == 20.0 and compute["verify_tokens"] == {"self": 5.0, "selfgen": 30.0}
    assert [p["tokens"] for p in compute["curves"]["bestof_selfgen"]] == [50.0, 100.0]
    write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert "## At equal compute" in md and "| 2 | 40 | 100.0 | — | — |" in md and compute["verdict"] in md
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 5000
