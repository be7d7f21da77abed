"""`vlrl sweep`: a config over seeds, each task's held-out figures per seed with their mean and interval."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import yaml

from test_cli import vlrl
from vlrl.recipes.sweep import mean_interval, parse_seeds, sweep_table


def test_seeds_are_a_range_or_a_list_and_anything_else_is_named():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("3,0,7") == [3, 0, 7] and parse_seeds("2") == [2]
    for bad in ("4-0", "a-b", "1,1", "", "-1"):
        with pytest.raises(ValueError, match="--seeds must be"):
            parse_seeds(bad)


def test_the_table_has_each_tasks_figures_per_seed_their_mean_and_t_interval():
    def summary(ws, rl, charts_rl):
        return {"teacher_accuracy": 0.5, "heldout_accuracy_warmstart": ws, "heldout_accuracy_rl": rl,
                "heldout_by_task": {"charts": {"questions": 2, "teacher": 0.5, "warmstart": ws, "rl": charts_rl},
                                    "tables": {"questions": 2, "teacher": 0.5, "warmstart": ws, "rl": 1.0}}}

    table = sweep_table({0: summary(0.5, 0.6, 0.5), 1: summary(0.5, 0.7, 0.4), 2: summary(0.5, 0.8, 0.6)})
    rl = table["all"]["rl"]
    assert rl["per_seed"] == {0: 0.6, 1: 0.7, 2: 0.8}
    half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) x sd / sqrt(n)
    assert rl["mean"] == pytest.approx(0.7) and rl["ci95"] == pytest.approx([0.7 - half, 0.7 + half])
    assert table["charts"]["gain"]["per_seed"] == pytest.approx({0: 0.0, 1: -0.1, 2: 0.1})
    assert table["tables"]["teacher"]["ci95"] == pytest.approx([0.5, 0.5])
    assert mean_interval([0.3]) == (0.3, None)
    # two seeds of 0.85 and 0.98: t(0.975, 1) = 12.706 takes the interval far past 1, and an accuracy stops there
    low = 0.915 - 12.706 * statistics.stdev([0.85, 0.98]) / math.sqrt(2)
    assert mean_interval([0.85, 0.98], (0.0, 1.0))[1] == pytest.approx([max(low, 0.0), 1.0])
    assert table["tables"]["rl"]["ci95"] == pytest.approx([1.0, 1.0])


@pytest.mark.slow
def test_a_sweep_runs_each_seed_and_tabulates_its_held_out_figures(train_config, tmp_path):
    out = tmp_path / "sweep"
    vlrl("sweep", str(train_config), "steps=1", "heldout.samples=6", "--seeds", "0-1", "--parallel", "2",
         "--out", str(out))
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["seeds"] == [0, 1] and sweep["failed"] == {}
    for seed in (0, 1):
        run = json.loads((out / f"seed-{seed}" / "latest" / "summary.json").read_text())
        assert sweep["table"]["all"]["rl"]["per_seed"][str(seed)] == run["heldout_accuracy_rl"]
        assert yaml.safe_load((out / f"seed-{seed}" / "latest" / "config.yaml").read_text())["seed"] == seed
        questions = [json.loads(line) for line in (out / f"seed-{seed}" / "latest" / "heldout.jsonl").open()]
        assert len(questions) == 6 and not any(key.startswith("heldout_correct") for key in run)
        assert statistics.fmean(q["correct"]["rl"] for q in questions) == pytest.approx(run["heldout_accuracy_rl"])
        assert statistics.fmean(q["tool_called"]["rl"] for q in questions) == pytest.approx(run["tool_call_rate_rl"])
    assert "| all | RL |" in (out / "sweep.md").read_text()
    shown = vlrl("compare", str(out), str(out), "--out", str(tmp_path / "cmp")).stdout  # a sweep against itself
    same = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert same["seeds"] == [0, 1] and all(same["per_seed"][s]["rl"]["ci95"] == [0.0, 0.0] for s in ("0", "1"))
    assert "| mean |" in shown
    bad = vlrl("sweep", str(train_config), "--seeds", "x", check=False)
    assert bad.returncode == 2 and "--seeds must be" in bad.stderr
