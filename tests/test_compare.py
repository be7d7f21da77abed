"""`vlrl compare`: two sweeps' held-out results paired seed by seed and question by question, figured by hand."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from test_cli import vlrl
from vlrl.eval.heldout import paired_bootstrap
from vlrl.recipes.compare import compare_sweeps


def write_run(folder, seed, rl, warmstart, tools, tool_rates=None, ids=None):
    run = folder / f"seed-{seed}" / "latest"
    run.mkdir(parents=True)
    ids = ids or [f"q{k}" for k in range(len(rl))]
    rows = [{"id": i, "task": "charts", "answers": ["A"], "correct": {"warmstart": w, "rl": r},
             "tool_called": {"warmstart": False, "rl": t}} for i, r, w, t in zip(ids, rl, warmstart, tools)]
    (run / "heldout.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (run / "summary.json").write_text(json.dumps({"heldout_accuracy_rl": statistics.fmean(rl)}))
    if tool_rates is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "rollout/tool_call_rate": v}) + "\n"
                                                   for s, v in enumerate(tool_rates)))


def test_each_seed_is_paired_over_its_questions_and_the_seeds_over_their_differences(tmp_path):
    tools, plain = tmp_path / "tools", tmp_path / "no-tools"
    ws = [1.0, 0.0, 0.0, 0.0]
    write_run(tools, 0, [1.0, 1.0, 0.0, 1.0], ws, [True, True, False, True], [0.5, 1.0])
    write_run(tools, 1, [1.0, 1.0, 1.0, 1.0], ws, [True] * 4, [0.7, 0.8])
    write_run(tools, 2, [1.0, 1.0, 0.0, 0.0], ws, [True] * 4)  # no metrics: left out of the curves
    for seed in (0, 1, 2, 3):
        write_run(plain, seed, [0.0] * 4 if seed == 1 else [1.0, 0.0, 0.0, 0.0], ws, [False] * 4, [0.0, 0.0])
    (tmp_path / "tools" / "seed-4" / "latest").mkdir(parents=True)  # a run that did not finish: not a seed

    result = compare_sweeps(tools, plain, tmp_path / "out")
    assert result["seeds"] == [0, 1, 2] and result["only_in_one_arm"] == [3]
    seed0 = result["per_seed"][0]["rl"]
    assert seed0["tools"] == 0.75 and seed0["no-tools"] == 0.25 and seed0["difference"] == 0.5
    assert seed0["ci95"] == list(paired_bootstrap([1, 0, 0, 0], [1, 1, 0, 1], seed=0))
    assert seed0["tool_call_rate"] == {"tools": 0.75, "no-tools": 0.0}
    assert result["per_seed"][1]["rl"]["ci95"] == [1.0, 1.0]  # every question differs by exactly one
    assert result["per_seed"][2]["warmstart"]["difference"] == 0.0
    differences = [0.5, 1.0, 0.25]
    mean = result["mean"]["rl"]["difference"]
    half = 4.303 * statistics.stdev(differences) / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert mean["mean"] == pytest.approx(7 / 12) and mean["ci95"] == pytest.approx([7 / 12 - half, 1.0])
    assert result["mean"]["rl"]["tools"]["mean"] == pytest.approx((0.75 + 1.0 + 0.5) / 3)
    assert result["curves"]["tools"]["rollout/tool_call_rate"] == [[0, pytest.approx(0.6)], [1, pytest.approx(0.9)]]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| 0 | 75.0 | 25.0 | +50.0 |" in md and "| mean | 75.0 | 16.7 | +58.3 |" in md
    assert (tmp_path / "out" / "compare.png").stat().st_size > 0


def test_arms_that_held_out_different_questions_are_refused_by_seed(tmp_path):
    write_run(tmp_path / "a", 0, [1.0, 0.0], [0.0, 0.0], [True, False])
    write_run(tmp_path / "b", 0, [1.0, 0.0], [0.0, 0.0], [True, False], ids=["q0", "other"])
    with pytest.raises(ValueError, match="seed 0: the arms held out different questions .* at question 1"):
        compare_sweeps(tmp_path / "a", tmp_path / "b", tmp_path / "out")
    bad = vlrl("compare", str(tmp_path / "a"), str(tmp_path / "missing"), check=False)
    assert bad.returncode != 0 and "is not a folder" in bad.stderr
