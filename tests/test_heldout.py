"""Held-out scoring: the teacher agent's documented imperfection, the majority baseline, the paired bootstrap."""

from __future__ import annotations

import json
import random
from itertools import islice
from pathlib import Path

import pytest

from vlrl.builtin.envs.agents import TeacherAgent
from vlrl.builtin.envs.visual_tool import VisualToolEnv
from vlrl.builtin.tasks.charts import synthetic_charts
from vlrl.builtin.tasks.mix import synthetic_charts_and_tables
from vlrl.builtin.tasks.rewards import chartqa_relaxed
from vlrl.builtin.tasks.tables import synthetic_tables
from vlrl.config import EnvConfig, SandboxConfig
from vlrl.eval.heldout import accuracy_by_task, evaluate_agent, majority_baseline, paired_bootstrap, regressions
from vlrl.recipes.summary import print_summary
from vlrl.rollout.play import play_agent
from vlrl.types import Sample


def test_the_teacher_uses_tools_and_is_right_as_often_as_documented(run, tokenizer, vision):
    samples = list(islice(synthetic_tables(seed=9, difficulty="easy"), 300))

    async def go(agent):
        async with VisualToolEnv(EnvConfig(max_turns=2, sandbox=SandboxConfig(workers=2)), tokenizer, vision) as env:
            return await evaluate_agent(env, tokenizer, chartqa_relaxed, agent, samples)

    judged = run(go(TeacherAgent(seed=1, p_tool=0.7, p_correct=0.6)))
    assert abs(judged.tool_call_rate - 0.7) < 0.08 and abs(judged.accuracy - 0.6) < 0.08
    perfect = run(go(TeacherAgent(seed=1, p_tool=1.0, p_correct=1.0)))
    assert perfect.accuracy == 1.0 and perfect.tool_call_rate == 1.0
    never = run(go(TeacherAgent(seed=1, p_tool=0.0, p_correct=0.0)))
    assert never.accuracy == 0.0 and never.tool_call_rate == 0.0  # every wrong answer really is wrong
    again = run(go(TeacherAgent(seed=1, p_tool=0.7, p_correct=0.6)))
    assert again.correct == judged.correct and again.tool_called == judged.tool_called
    with pytest.raises(ValueError, match="p_tool, p_correct and p_verbose"):
        TeacherAgent(p_correct=1.5)


def test_the_teachers_calls_on_the_quickstarts_charts_and_tables_never_fail(run, tokenizer, vision):
    """Each of its calls names the labels the tool knows: every bar of a chart, every row of a table
    under its header. A model imitating it learns calls that run."""
    samples = list(islice(synthetic_charts_and_tables(charts={"kinds": ["v_bar"], "families": ["largest"],
                                                              "difficulty": "starter", "labels": "letters"},
                                                      tables={"families": ["largest"], "difficulty": "starter",
                                                              "labels": "letters"}), 16))
    tools = ["vlrl.builtin.tools.focus:focus_on_x_values_with_draw", "vlrl.builtin.tools.focus:focus_on_rows_with_draw"]

    async def go():
        async with VisualToolEnv(EnvConfig(tools=tools, max_turns=2, sandbox=SandboxConfig(workers=2)), tokenizer,
                                 vision) as env:
            return await play_agent(env, tokenizer, TeacherAgent(seed=0, p_tool=1.0, brief=True), samples, "calls")

    for traj, sample in zip(run(go()), samples):
        assert [(a.name, a.ok, a.error) for a in traj.actions] == [
            ("focus_on_rows_with_draw" if sample.task == "synthetic_tables" else "focus_on_x_values_with_draw", True,
             None)], sample.id
        if sample.task == "synthetic_tables":
            body = [row[0] for row in sample.metadata["cells"][1:]]
            assert f'"rows_to_focus_on": {json.dumps(body)}' in tokenizer.decode(traj.token_ids), sample.id


def test_offered_compare_bars_the_teacher_names_the_two_leaders_in_chart_order_and_the_tool_runs(run, tokenizer,
                                                                                                    vision):
    """On the close rung its call names the answer and the runner-up, left to right (which of them comes first says
    nothing about the answer); the tool runs, and with p_correct 0.5 its wrong answers are that runner-up."""
    samples = list(islice(synthetic_charts(seed=6, kinds=["v_bar"], families=["largest"], difficulty="close",
                                           labels="letters"), 40))

    async def go():
        async with VisualToolEnv(EnvConfig(tools=["vlrl.builtin.tools.bars:compare_bars"], max_turns=2,
                                           sandbox=SandboxConfig(workers=2)), tokenizer, vision) as env:
            return await play_agent(env, tokenizer, TeacherAgent(seed=0, p_tool=1.0, p_correct=0.5, brief=True),
                                    samples, "compare")

    first_is_answer = set()
    for traj, sample in zip(run(go()), samples):
        cats = sample.metadata["table"]["categories"]
        values = [float(v) for v in sample.metadata["table"]["series"]["Value"]]
        leaders = [cats[c] for c in sorted(sorted(range(len(cats)), key=lambda c: -values[c])[:2])]
        assert [(a.name, a.ok, a.error) for a in traj.actions] == [("compare_bars", True, None)], sample.id
        assert f'"bars_to_compare": {json.dumps(leaders)}' in tokenizer.decode(traj.token_ids), sample.id
        assert traj.answer in leaders, sample.id
        first_is_answer.add(leaders[0] == sample.answers[0])
    assert first_is_answer == {True, False}


def test_a_verbose_teacher_gives_a_long_tail_of_answers_and_the_same_answers(run, tokenizer, vision):
    samples = list(islice(synthetic_charts(seed=3, kinds=("v_bar",), difficulty="easy"), 200))

    async def go(agent):
        async with VisualToolEnv(EnvConfig(max_turns=2, sandbox=SandboxConfig(workers=2)), tokenizer, vision) as env:
            trajs = await play_agent(env, tokenizer, agent, samples, "verbose")
            return trajs, (await evaluate_agent(env, tokenizer, chartqa_relaxed, agent, samples)).correct

    (brief, correct), (verbose, verbose_correct) = (run(go(TeacherAgent(seed=2, brief=True, p_verbose=p,
                                                                        verbose_lines=30)))
                                                    for p in (0.0, 0.2))
    assert verbose_correct == correct  # the thought changes the length, not the answer
    lengths = [len(tokenizer.decode([t for t, m in zip(tr.token_ids, tr.loss_mask) if m]).split("I check"))
               - 1 for tr in verbose]
    assert all(n == 0 for n in [len(tokenizer.decode(tr.token_ids).split("I check")) - 1 for tr in brief])
    long = [n for n in lengths if n]
    assert abs(len(long) / len(lengths) - 0.2) < 0.08 and min(long) >= 1 and max(long) <= 30
    assert max(long) - min(long) >= 15  # spread over the range, not one length
    with pytest.raises(ValueError, match="verbose_lines and cot_cap must be >= 1, got 0, 200"):
        TeacherAgent(verbose_lines=0)


def test_a_chain_of_thought_teacher_writes_a_lognormal_thought_before_every_answer():
    teacher = TeacherAgent(seed=0, cot_median=4, cot_sigma=1.5, cot_cap=80)
    lines = sorted(teacher.thought_lines(random.Random(k)) for k in range(4000))
    assert lines[0] >= 1 and lines[-1] == 80  # every answer thinks; the heaviest tail is cut at the cap
    assert lines[len(lines) // 2] == 4  # the median
    # lognormal with sigma 1.5: 16% of draws lie beyond median x e^1.5 = 17.9 sentences
    assert abs(sum(n > 17.9 for n in lines) / len(lines) - 0.159) < 0.03
    with pytest.raises(ValueError, match="cot_median and cot_sigma must be >= 0, got -1"):
        TeacherAgent(cot_median=-1)


def test_majority_baseline_is_the_most_common_answers_share():
    samples = [Sample(str(k), (), "q", (a,)) for k, a in enumerate(["A", "A", "B", "c"])]
    assert majority_baseline(samples, chartqa_relaxed) == 0.5


def test_paired_bootstrap_interval():
    before = [0.0] * 50 + [1.0] * 50
    assert paired_bootstrap(before, before) == (0.0, 0.0)
    after = [1.0] * 100  # +0.5 on average, all gains on the first half
    low, high = paired_bootstrap(before, after)
    assert 0.35 < low < 0.5 < high < 0.65
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap([1.0], [1.0, 0.0])


def _nearest_in_value(categories: list[str], values: list[float]) -> str:
    return sorted(zip(values, categories))[-2][1]  # the runner-up


def _next_on_the_axis(categories: list[str], values: list[float]) -> str:
    at = values.index(max(values))
    return categories[at + 1] if at + 1 < len(categories) else categories[at - 1]


@pytest.mark.parametrize("confusion, expected", [("value", _nearest_in_value), ("neighbor", _next_on_the_axis)])
def test_a_wrong_teacher_makes_its_documented_confusion(run, tokenizer, vision, confusion, expected):
    """The teacher's mistakes are consistent (for "largest": the runner-up, or the bar next to
    the tallest), so imitation inherits them."""
    samples = list(islice(synthetic_charts(seed=3, kinds=["v_bar"], families=["largest"], difficulty="starter",
                                           labels="letters"), 12))
    agent = TeacherAgent(seed=0, p_tool=0.5, p_correct=0.0, brief=True, confusion=confusion)

    async def go():
        async with VisualToolEnv(EnvConfig(max_turns=2, sandbox=SandboxConfig(workers=1)), tokenizer, vision) as env:
            return await play_agent(env, tokenizer, agent, samples, "wrong")

    answers = []
    for sample, traj in zip(samples, run(go())):
        table = sample.metadata["table"]
        answers.append(traj.answer)
        assert traj.answer == expected(table["categories"], list(map(float, table["series"]["Value"])))
        assert "THOUGHT" not in tokenizer.decode(traj.token_ids)  # brief traces
    assert len(set(answers)) > 1
    with pytest.raises(ValueError, match="confusion"):
        TeacherAgent(confusion="random")


def test_accuracy_by_task_splits_a_mixed_held_out_set():
    samples = [Sample(str(k), (), "q", ("A",), task=task) for k, task in enumerate(["charts", "tables"] * 3)]
    by_task = accuracy_by_task(samples, {"warmstart": [1, 0, 1, 0, 0, 0], "rl": [1, 1, 1, 1, 0, 1]})
    assert by_task == {"charts": {"questions": 3, "warmstart": 2 / 3, "rl": 2 / 3},
                       "tables": {"questions": 3, "warmstart": 0.0, "rl": 1.0}}
    with pytest.raises(ValueError, match="rl has 2 results for 6 questions"):
        accuracy_by_task(samples, {"rl": [1, 0]})


def test_a_task_that_fell_below_its_warm_start_or_the_teacher_is_flagged_with_its_interval(capsys):
    """Tables rise, charts fall below the warm start (and the teacher): the headline rises, the flag names charts."""
    samples = [Sample(str(k), (), "q", ("A",), task=task) for k, task in enumerate(["charts", "tables"] * 20)]
    charts, tables = range(0, 40, 2), range(1, 40, 2)
    results = {"teacher": [0.0] * 40, "warmstart": [0.0] * 40, "rl": [0.0] * 40}
    for k in list(charts)[:12]:
        results["teacher"][k] = results["warmstart"][k] = 1.0  # 12 of 20 charts right before RL
    for k in list(charts)[:8] + list(tables):
        results["rl"][k] = 1.0  # RL: 8 of 20 charts, every table
    found = regressions(samples, results, seed=3)
    assert [(r["task"], r["below"]) for r in found] == [("charts", "warmstart"), ("charts", "teacher")]
    chart = found[0]
    assert (chart["questions"], chart["rl"], chart["warmstart"]) == (20, 0.4, 0.6)
    expected = paired_bootstrap([results["warmstart"][k] for k in charts], [results["rl"][k] for k in charts], seed=3)
    assert chart["rl_minus_ci95"] == list(expected) and expected[1] < 0  # here the fall is beyond chance
    assert regressions(samples, {"warmstart": results["warmstart"], "rl": results["warmstart"]}) == []
    print_summary({"regressions": found}, Path("run"))
    shown = capsys.readouterr().out
    assert "! charts: RL 0.400 is below the warm start 0.600 on 20 held-out questions" in shown
    assert f"[{expected[0]:+.3f}, {expected[1]:+.3f}]" in shown and "below the teacher 0.600" in shown
