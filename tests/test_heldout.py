"""Held-out scoring: the teacher agent's documented imperfection, the majority baseline, the paired bootstrap."""

from __future__ import annotations

from itertools import islice

import pytest

from envs.agents import TeacherAgent
from envs.visual_tool import VisualToolEnv
from tasks.charts import synthetic_charts
from tasks.rewards import chartqa_relaxed
from tasks.tables import synthetic_tables
from vlrl.config import EnvConfig
from vlrl.heldout import evaluate_agent, majority_baseline, paired_bootstrap
from vlrl.play import play_agent
from vlrl.sandbox.pool import SandboxConfig
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
    with pytest.raises(ValueError, match="p_tool and p_correct"):
        TeacherAgent(p_correct=1.5)


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


def test_a_wrong_teacher_answers_the_label_nearest_in_value(run, tokenizer, vision):
    """The teacher's mistakes are consistent (the runner-up, for "largest"), so imitation inherits them."""
    samples = list(islice(synthetic_charts(seed=3, kinds=["v_bar"], families=["largest"], difficulty="starter",
                                           labels="letters"), 12))

    async def go():
        async with VisualToolEnv(EnvConfig(max_turns=2, sandbox=SandboxConfig(workers=1)), tokenizer, vision) as env:
            return await play_agent(env, tokenizer, TeacherAgent(seed=0, p_tool=0.5, p_correct=0.0, brief=True),
                                    samples, "wrong")

    for sample, traj in zip(samples, run(go())):
        table = sample.metadata["table"]
        ranked = sorted(zip(map(float, table["series"]["Value"]), table["categories"]))
        assert traj.answer == ranked[-2][1]
        assert "THOUGHT" not in tokenizer.decode(traj.token_ids)  # brief traces
