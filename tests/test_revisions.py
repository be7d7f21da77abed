"""Self-correction inside a trajectory: revision signs on hand-built trajectories, and their figures by hand."""

from __future__ import annotations

import pytest

from vlrl.answer import stated_answers
from vlrl.builtin.tasks.rewards import chartqa_relaxed
from vlrl.config import REVISION_PHRASES, EvalConfig
from vlrl.eval.report import build_report, write_report
from vlrl.eval.revisions import find_revisions
from vlrl.eval.run import same_answer
from vlrl.types import ActionRecord


def same(a: str, b: str) -> bool:
    return same_answer(chartqa_relaxed, a, b)


def find(turns, actions=()):
    return find_revisions(turns, actions, REVISION_PHRASES, same)


def call(turn: int, kind: str = "tool") -> ActionRecord:
    return ActionRecord(turn, kind, "compare_bars" if kind == "tool" else "", ok=kind == "tool")


def test_every_stated_answer_in_order():
    assert stated_answers("FINAL ANSWER: 3\nno...\nFINAL ANSWER: 4. TERMINATE") == ["3", "4"]
    assert stated_answers("so \\boxed{a} or rather \\boxed{b{c}}") == ["a", "b{c}"]
    assert stated_answers("FINAL ANSWER:\nno answer here") == [] and stated_answers("just text") == []


def test_an_answer_stated_then_changed_across_turns_or_within_one():
    found = find(["FINAL ANSWER: B\n<tool_call>{}</tool_call>", "FINAL ANSWER: C"], [call(1)])
    assert found == {"kinds": ["answer"], "phrases": [], "first": "B", "last": "C", "changed": True}
    within = find(["FINAL ANSWER: 40\nHmm, FINAL ANSWER: 45"])
    assert within["changed"] and within["first"] == "40" and within["last"] == "45"
    # the same answer again (as the reward counts it: 62 and 62.0) is no change; a change back still is one
    assert find(["FINAL ANSWER: 62", "FINAL ANSWER: 62.0"])["kinds"] == []
    assert find(["FINAL ANSWER: A\nFINAL ANSWER: B\nFINAL ANSWER: A"])["changed"]
    assert find(["no answer at all"]) == {"kinds": [], "phrases": [], "first": None, "last": None, "changed": False}


def test_revision_phrases_are_whole_words_in_any_case():
    found = find(["Wait, the bar B is taller. Let me re-check. FINAL ANSWER: B"])
    assert found["kinds"] == ["phrase"] and found["phrases"] == ["wait", "let me re-check"]
    assert find(["Awaiting the tool; factually B. FINAL ANSWER: B"])["kinds"] == []  # inside other words
    own = find_revisions(["hmm, B. FINAL ANSWER: B"], [], ["hmm"], same)
    assert own["phrases"] == ["hmm"]


def test_a_tool_called_again_after_a_result_is_a_recall_and_calls_in_one_turn_are_not():
    assert find(["<tool_call>1</tool_call>", "<tool_call>2</tool_call>", "FINAL ANSWER: A"],
                [call(1), call(2)])["kinds"] == ["tool_recall"]
    assert find(["<tool_call>1</tool_call><tool_call>2</tool_call>", "FINAL ANSWER: A"],
                [call(1), call(1)])["kinds"] == []
    # an action that never ran (a parse error) gave no result to revise after
    assert find(["<tool_call>{oops</tool_call>", "<tool_call>2</tool_call>", "FINAL ANSWER: A"],
                [call(1, "invalid"), call(2)])["kinds"] == []


def sample(correct: float, kinds=(), changed=False, before=None):
    revision = {"kinds": list(kinds), "phrases": [], "first": "x", "last": "y", "changed": changed}
    if kinds:
        revision |= {"before": correct if before is None else before, "text": "FINAL ANSWER: x ... FINAL ANSWER: y"}
    return {"answer": "y", "correct": correct, "tool_calls": 0, "tool_errors": 0, "cluster": 0, "revision": revision}


def test_the_revision_figures_by_hand(tmp_path):
    q0 = [sample(1.0, ["answer"], changed=True, before=0.0), sample(0.0, ["answer", "phrase"], changed=True,
                                                                      before=1.0)]
    q1 = [sample(1.0), sample(0.0, ["tool_recall"])]
    q2 = [sample(1.0), {"answer": None, "correct": 0.0, "dropped": "error", "cluster": -1}]
    records = [{"index": i, "id": f"q{i}", "samples": s} for i, s in enumerate([q0, q1, q2])]
    report = build_report(records, EvalConfig(samples=2, bootstrap=100), seconds=1.0)
    f = {name: fig["value"] for name, fig in report["figures"].items()}
    assert f["revision_rate"] == pytest.approx(3 / 5)  # the dropped sample is not counted
    assert f["revision_rate_answer"] == pytest.approx(2 / 5) and f["revision_rate_phrase"] == pytest.approx(1 / 5)
    assert f["revision_rate_tool_recall"] == pytest.approx(1 / 5)
    assert f["accuracy_with_revision"] == pytest.approx(1 / 3) and f["accuracy_without_revision"] == 1.0
    assert f["revision_fixed"] == pytest.approx(1 / 2) and f["revision_broken"] == pytest.approx(1 / 2)
    assert [(e["question"], e["sample"]) for e in report["revision_examples"]] == [("q0", 0), ("q0", 1), ("q1", 1)]
    write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert "| 60.0 [" in md and "Question q1, sample 1 (tool_recall; first answer 'x', last 'y', wrong)" in md
    none = build_report([{"index": 0, "id": "q", "samples": [sample(1.0), sample(0.0)]}],
                        EvalConfig(samples=2, bootstrap=10), seconds=1.0)["figures"]
    assert none["revision_rate"]["value"] == 0.0 and none["accuracy_without_revision"]["value"] == 0.5
    assert none["accuracy_with_revision"]["value"] is None and none["revision_fixed"]["value"] is None
