"""Loss-mask policies (``algo.loss_mask``, ``algo.mask_over_turns``) and the tool-use health figures, on
trajectories built by hand."""

from __future__ import annotations

import pytest
import torch

from vlrl.algos.grpo import group_advantages, informative_groups
from vlrl.algos.masks import masked
from vlrl.algos.units import grpo_items
from vlrl.rollout.figures import rollout_record, watch_tool_use
from vlrl.rollout.manager import RolloutResult
from vlrl.types import ActionRecord, Group, Sample, Segment, Trajectory


def policy(n: int, first: int = 100) -> Segment:
    return Segment("policy", tuple(range(first, first + n)), logprobs=(-0.5,) * n, versions=(0,) * n)


def two_tool_rounds(reason: str = "answer", reward: float = 1.0) -> Trajectory:
    """prompt 5 | policy 3 | observation 4 | policy 2 | observation 3 | policy 4."""
    segments = [Segment("prompt", (1,) * 5), policy(3), Segment("observation", (2,) * 4), policy(2),
                Segment("observation", (3,) * 3), policy(4)]
    return Trajectory(f"t-{reason}-{reward}", "s", segments, reward=reward, finish_reason=reason)


def test_final_turn_trains_exactly_the_tokens_after_the_last_observation():
    traj = two_tool_rounds()
    assert traj.loss_mask == [0] * 5 + [1] * 3 + [0] * 4 + [1] * 2 + [0] * 3 + [1] * 4
    final = masked(traj, "final_turn")
    assert final.loss_mask == [0] * 17 + [1] * 4
    assert final.token_ids == traj.token_ids and final.behavior_logprobs == traj.behavior_logprobs
    assert traj.loss_mask.count(1) == 9  # the trajectory as generated is untouched
    no_tool = Trajectory("direct", "s", [Segment("prompt", (1,) * 5), policy(6)])
    assert masked(no_tool, "final_turn").loss_mask == [0] * 5 + [1] * 6  # its one turn is the final one
    assert masked(traj, "all_turns") is traj
    with pytest.raises(ValueError, match="algo.loss_mask"):
        masked(traj, "last_turn")


def test_over_turn_masking_leaves_the_cut_trajectory_out_of_its_group_and_the_loss():
    cut = two_tool_rounds("max_turns", reward=0.0)
    assert masked(cut, "all_turns", mask_over_turns=True).loss_mask == [0] * 21
    group = Group(Sample("s", (), "q", ("a",)), [two_tool_rounds("answer", 1.0), two_tool_rounds("answer", 0.0),
                                                cut, two_tool_rounds("answer", 1.0)])
    items, _ = grpo_items([group], mask_over_turns=True)
    # the three left: rewards 1, 0, 1; mean 2/3; Bessel std sqrt((1/9 + 4/9 + 1/9) / 2) = 0.57735
    assert len(items) == 3 and cut not in [it.trajectory for it in items]
    assert [it.advantage for it in items] == pytest.approx([0.57735, -1.15470, 0.57735], abs=1e-4)
    penalised, _ = grpo_items([group])  # off: the cut one is a wrong answer like any other
    assert len(penalised) == 4 and penalised[2].advantage == pytest.approx(-0.86603, abs=1e-4)
    finals, _ = grpo_items([group], loss_mask="final_turn", mask_over_turns=True)
    assert all(it.trajectory.loss_mask.count(1) == 4 for it in finals)


def test_group_statistics_over_the_valid_trajectories_only():
    rewards = torch.tensor([[1.0, 0.0, 5.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False, True], [True, False, False, False]])
    a = group_advantages(rewards, valid=valid)
    assert a[0].tolist() == pytest.approx([0.57735, -1.15470, 0.0, 0.57735], abs=1e-4)
    assert torch.equal(a[1], torch.zeros(4))  # one left: no signal
    assert group_advantages(rewards, scale=False, valid=valid)[0].tolist() == pytest.approx([1 / 3, -2 / 3, 0, 1 / 3])
    same = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert informative_groups(same).tolist() == [True]
    assert informative_groups(same, torch.tensor([[True, True, False, True]])).tolist() == [False]


def test_tool_use_by_tool_and_its_success():
    calls = [ActionRecord(1, "call", "zoom_in", True), ActionRecord(1, "call", "zoom_in", False, "bad box"),
             ActionRecord(1, "code", "", True), ActionRecord(1, "invalid", "", False, "no JSON")]
    with_tools = Trajectory("a", "s", [Segment("prompt", (1,)), policy(2)], reward=1.0, actions=calls)
    without = Trajectory("b", "s", [Segment("prompt", (1,)), policy(2)], reward=0.0)
    record = rollout_record(RolloutResult([Group(Sample("s", (), "q", ("a",)), [with_tools, without])]), 1)
    assert record.rollout.tool_uses == {"code": 1, "zoom_in": 2}
    assert record.rollout.tool_success == {"code": 1.0, "zoom_in": 0.5}
    assert record.rollout.tool_call_rate == 0.5
    flat = record.flat()
    assert flat["rollout/tool_uses"] == {"code": 1, "zoom_in": 2} and flat["rollout/tool_success"]["zoom_in"] == 0.5


def test_a_collapse_of_tool_use_is_named_once():
    health: dict = {}
    rates = [0.8, 0.7, 0.9, 0.1, 0.5, 0.1, 0.15, 0.0, 0.0, 0.0]
    warnings = [(step, watch_tool_use(health, step, rate)) for step, rate in enumerate(rates)]
    named = [(step, w) for step, w in warnings if w is not None]
    # baseline 0.8; under 0.2 at steps 3, 5, 6, 7: the run of three ends at 7 (step 4 broke the first)
    assert [step for step, _ in named] == [7] and "80%" in named[0][1]
    assert health["collapsed_at_step"] == 7
    quiet: dict = {}
    assert all(watch_tool_use(quiet, step, 0.0) is None for step in range(10))  # no tools at all: nothing to lose


def test_a_reward_that_takes_context_reads_the_question_and_the_tool_use(tokenizer):
    from vlrl.rollout.manager import score_trajectory
    from vlrl.types import Score

    seen = {}

    def careful(text, answers, context):
        seen.update(question=context.question, calls=context.tool_stats["tool_calls"], turns=context.turns,
                    finish=context.finish_reason, task=context.metadata["family"])
        return Score(float(text.strip() == answers[0]))

    def plain(text, answers):
        return Score(1.0)

    traj = two_tool_rounds()
    traj.actions = [ActionRecord(1, "call", "zoom_in", True), ActionRecord(2, "call", "zoom_in", False, "bad")]
    sample = Sample("s", (), "Which is largest?", ("B",), {"family": "largest"})
    score_trajectory(traj, sample, tokenizer, careful)
    assert seen == {"question": "Which is largest?", "calls": 2, "turns": 3, "finish": "answer", "task": "largest"}
    score_trajectory(traj, sample, tokenizer, plain)  # a plain reward is called as before
    assert traj.reward == 1.0


def test_mini_batches_of_a_step_whose_items_no_longer_divide_evenly():
    from vlrl.algos.units import mini_batch_slices

    def cut(n, k):
        return [len(range(n)[part]) for part in mini_batch_slices(n, k)]

    assert cut(12, 4) == [3, 3, 3, 3]  # the even case, as before
    assert cut(11, 4) == [3, 3, 3, 2]  # an over-turn trajectory left out
    assert cut(3, 4) == [1, 1, 1]  # fewer items than mini-batches: one each, none empty
    assert cut(0, 4) == []
