"""`vlrl plan`'s twin: the real scheduler on cost-model parts and a simulated clock reproduces hand-computed
schedules, and jumps over time instead of sleeping through it."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from test_cli import vlrl
from test_scheduler import KEEP_DECODING, LENGTHS
from vlrl.plan.clock import simulate
from vlrl.plan.costs import Costs, load
from vlrl.plan.twin import Plan, simulate_steps

# one decode step a second, whatever the batch; nothing else costs but the update
TICKS = dict(decode_base_s=1.0, decode_per_request_s=0.0, prefill_per_token_s=0.0, tool_s=0.0, update_base_s=0.0,
             update_per_token_s=0.0, sync_s=0.0)


def scripted(lengths):
    def script(traj_id):
        group, member = traj_id.rsplit("-", 1)
        return [lengths[group][int(member)]]

    return script


def test_the_clock_jumps_to_the_next_timer():
    async def main():
        loop = asyncio.get_running_loop()

        async def wake(after):
            await asyncio.sleep(after)
            return loop.time()

        return await asyncio.gather(wake(3600), wake(5), wake(0.25))

    began = time.perf_counter()
    assert simulate(main()) == [3600.0, 5.0, 0.25]
    assert time.perf_counter() - began < 1.0  # an hour simulated, not slept


def test_the_twin_trains_the_hand_computed_groups_of_the_paused_schedule(tokenizer):
    """test_scheduler's first schedule (pause at the close, a staleness cap of 2), with a 0.5 s update."""
    plan = Plan("overlap", groups=2, group_size=2, extra=2, max_staleness=2, max_tokens=100, prompt_tokens=10)
    costs = Costs(**{**TICKS, "update_base_s": 0.5})
    steps = simulate(simulate_steps(plan, costs, scripted(LENGTHS), 3, tokenizer,
                                    tokenizer.convert_tokens_to_ids("<|im_end|>")))
    assert [s.trained for s in steps] == [["s0-0", "s0-2"], ["s1-0", "s1-1"], ["s0-1", "s2-0"]]
    assert [s.staleness for s in steps] == [{0: 2}, {0: 2}, {2: 1, 0: 1}]
    assert [s.dropped for s in steps] == [0, 0, 2]  # s0-3, carried a third time
    # step 0 closes at the 9th token; the resumed and new requests join the step after the update (at 9.5 s),
    # so s1-1's 5th token comes at 14.5 s and s2-0's 30th at 45 s
    assert [round(s.rollout_s, 3) for s in steps] == [9.0, 5.0, 30.0]
    assert all(s.update_s == 0.5 for s in steps)


def test_the_twin_reproduces_the_hand_computed_disaggregated_schedule(tokenizer):
    """test_scheduler's disaggregated schedule: the engine decodes through a 10.5 s update."""
    plan = Plan("overlap", groups=2, group_size=2, extra=2, keep_decoding=True, max_tokens=100, prompt_tokens=10)
    costs = Costs(**{**TICKS, "update_base_s": 10.5})
    steps = simulate(simulate_steps(plan, costs, scripted(KEEP_DECODING), 3, tokenizer,
                                    tokenizer.convert_tokens_to_ids("<|im_end|>")))
    assert [s.trained for s in steps] == [["s0-0", "s0-2"], ["s0-3", "s1-0"], ["s0-1", "s1-1"]]
    assert [s.staleness for s in steps] == [{0: 2}, {1: 1, 0: 1}, {2: 1, 1: 1}]
    # closes at 9 s, 23 s (s1-0, joined at 19.5 s, writes its 3rd token at the next whole second after 20) and 40 s
    assert [round(s.rollout_s, 3) for s in steps] == [9.0, 3.5, 6.5]
    assert [s.engine_busy_fraction for s in steps] == [1.0, 1.0, 1.0]  # decoding through every update
    # step 0's 8 slots over its 19.5 s: 8 requests until 2 s, then 7, 6, 5 at 2, 3, 4 s, 4 from 5 s, 3 from 9 s
    # and s0-1-0 alone from 12 s: (1 + 2 + 3 + 4 x 4 + 5 x 3 + 7 x 7.5) / (8 x 19.5) slots empty
    assert round(steps[0].bubble_ratio, 4) == round(89.5 / 156, 4)


def cost_file(path, decode_per_request_s=0.0):
    """GPU-like costs: a decode step costs about the same at 1 request as at 64."""
    costs = {"decode_base_s": 0.02, "decode_per_request_s": decode_per_request_s, "prefill_per_token_s": 2e-5,
             "tool_s": 0.05, "update_base_s": 0.5, "update_per_token_s": 1e-4, "sync_s": 0.2, "source": "test"}
    path.write_text(json.dumps({"colocated": costs, "disaggregated": {**costs, "update_per_token_s": 2e-4}}))
    return path


def test_plan_predicts_every_schedule_and_recommends_one(tmp_path, tiny_dir):
    out = vlrl("plan", "--costs", str(cost_file(tmp_path / "costs.json")), "--workload", "longtail-cot",
               "--steps", "2", "--model", str(tiny_dir), "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert {"speedup_intra", "speedup_inter", "speedup_intra_inter", "speedup_sync_split", "speedup_disaggregated",
            "efficiency_best", "recommended"} <= set(figures)
    # a decode step as cheap for 64 requests as for 1: not waiting for the long tail must pay
    assert figures["speedup_inter"] > 1 and figures["speedup_disaggregated"] > 1
    assert 0 < figures["efficiency_best"] <= 1 and "recommended: " in out
    assert figures["recommended"]["placement"] in ("colocated", "disaggregated")


def test_plan_refuses_a_cost_file_it_cannot_read(tmp_path, tiny_dir):
    bad = tmp_path / "costs.json"
    bad.write_text(json.dumps({"colocated": {"decode_base_s": 1.0}}))
    result = vlrl("plan", "--costs", str(bad), "--model", str(tiny_dir), check=False)
    assert result.returncode == 2 and f"{bad}: not a cost file of `vlrl plan calibrate`" in result.stderr


@pytest.mark.slow
def test_calibrate_measures_this_machine_into_a_cost_file_plan_reads(tmp_path, tiny_dir):
    out = vlrl("plan", "calibrate", "--costs", str(tmp_path / "costs.json"), "--model", str(tiny_dir)).stdout
    placements = load(tmp_path / "costs.json")
    for costs in placements.values():
        # a CPU pays for every request it decodes (per request, or through the context the batch attends to)
        assert costs.decode_step_s(64, 64 * 200) > costs.decode_step_s(1, 200) > 0
        assert costs.update_per_token_s > 0 and costs.tool_s > 0 and "calibrate" in costs.source
    assert "colocated" in out and "disaggregated" in out
    result = vlrl("plan", "--costs", str(tmp_path / "costs.json"), "--steps", "1", "--model", str(tiny_dir))
    assert "recommended: " in result.stdout
