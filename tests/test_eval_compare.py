"""`vlrl eval --compare`: models side by side on the same questions, differences paired, by hand and end to end."""

from __future__ import annotations

import numpy as np
import pytest

from vlrl.config import EvalConfig
from vlrl.eval.compare import compare_models, default_names, markdown
from vlrl.eval.report import question_resamples


def records(greedy, samples, scores):
    """One record per question: its greedy result, two samples' results and their P(Yes)."""
    return [{"index": q, "id": f"q{q}", "greedy": {"correct": g},
             "samples": [{"answer": "A" if c else "B", "correct": c, "cluster": 0 if c else 1, "tool_calls": 0,
                          "tool_errors": 0, "scores": {"self": s}} for c, s in zip(cs, ss)]}
            for q, (g, cs, ss) in enumerate(zip(greedy, samples, scores))]


def test_each_figure_side_by_side_and_each_difference_paired_by_hand(tmp_path):
    cfg = EvalConfig(samples=2, bootstrap=400)
    base = records([1.0, 0.0, 0.0, 0.0], [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]],
                   [[0.9, 0.1], [0.5, 0.5], [0.2, 0.3], [0.7, 0.6]])
    rl = records([1.0, 1.0, 1.0, 0.0], [[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
                 [[0.9, 0.8], [0.7, 0.2], [0.6, 0.4], [0.1, 0.9]])
    same = records([0.0, 1.0, 1.0, 1.0], [[0.0, 0.0]] * 4, [[0.5, 0.5]] * 4)
    result = compare_models({"ws": base, "rl": rl, "flip": same}, cfg)
    assert result["models"] == ["ws", "rl", "flip"] and result["base"] == "ws" and result["questions"] == 4
    greedy = result["figures"]["greedy_accuracy"]
    assert greedy["values"] == {"ws": 0.25, "rl": 0.75, "flip": 0.75}
    assert greedy["vs_base"]["rl"]["value"] == pytest.approx(0.5)
    # the paired interval: each resample of the questions, RL's accuracy minus the base's on the same questions
    draws = np.asarray([0.0, 1.0, 1.0, 0.0])[question_resamples(4, 400)].mean(axis=1)
    assert greedy["vs_base"]["rl"]["ci95"] == pytest.approx(np.quantile(draws, [0.025, 0.975]).tolist())
    assert result["figures"]["mean_accuracy"]["values"]["rl"] == pytest.approx(5 / 8)
    assert result["figures"]["maj@2"]["values"]["ws"] == pytest.approx(1 / 4)  # q0 and q3 tie: the first drawn
    auroc = result["figures"]["verifier_auroc_image"]
    # right answers scored 0.9 and 0.6 against six wrong ones, one of them 0.7: 11 of 12 pairs in order
    assert auroc["values"]["ws"] == pytest.approx(11 / 12) and auroc["values"]["flip"] is None  # all wrong: none
    assert auroc["vs_base"]["flip"] == {"value": None, "ci95": None}
    md = markdown(result)
    assert "| greedy_accuracy | 25.0 | 75.0 | 75.0 | +50.0 [" in md and "| verifier_auroc_image | 0.917 |" in md
    with pytest.raises(ValueError, match="answered different questions"):
        compare_models({"ws": base, "other": base[:3]}, cfg)
    with pytest.raises(ValueError, match="at least two models"):
        compare_models({"ws": base}, cfg)


def test_default_names_are_the_shortest_parts_that_differ():
    assert default_names(["runs/a/checkpoints/last/model", "runs/b/checkpoints/last/model"]) == [
        "a/checkpoints/last/model", "b/checkpoints/last/model"]
    assert default_names(["runs/ws", "runs/rl"]) == ["ws", "rl"]
    with pytest.raises(ValueError, match="names a model twice"):
        default_names(["runs/rl", "runs/rl"])
