"""`vlrl plan`'s twin: the real scheduler on cost-model parts and a simulated clock reproduces hand-computed
schedules, and jumps over time instead of sleeping through it."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from test_cli import vlrl
from test_scheduler import KEEP_DECODING, LENGTHS
from vlrl.plan.clock import simulate
from vlrl.plan.costs import Costs, load, update_positions
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
    """test_scheduler's first schedule (pause at the close, a staleness cap of 2), with a 0.5 s update: nothing
    decodes beside it, so the engine's contention does not slow it."""
    plan = Plan("overlap", groups=2, group_size=2, extra=2, max_staleness=2, max_tokens=100, prompt_tokens=10)
    costs = Costs(**{**TICKS, "update_base_s": 0.5, "update_contention": 3.0})
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
    """test_scheduler's disaggregated schedule: the engine decodes through a 10.5 s update (5.25 s alone, twice that
    beside the engine), the next step's groups among what it decodes."""
    plan = Plan("overlap", groups=2, group_size=2, extra=2, keep_decoding=True, max_tokens=100, prompt_tokens=10)
    costs = Costs(**{**TICKS, "update_base_s": 5.25, "update_contention": 2.0})
    steps = simulate(simulate_steps(plan, costs, scripted(KEEP_DECODING), 4, tokenizer,
                                    tokenizer.convert_tokens_to_ids("<|im_end|>")))
    assert [s.trained for s in steps] == [["s0-0", "s0-2"], ["s0-3", "s0-4"], ["s1-0", "s1-1"], ["s0-1", "s0-5"]]
    assert [s.staleness for s in steps] == [{0: 2}, {1: 1, 0: 1}, {0: 2}, {3: 1, 2: 1}]
    # closes at 9 s; then each batch is whole when its step begins (s0-1-0's 40th token comes at 40 s, before 40.5)
    assert [round(s.rollout_s, 3) for s in steps] == [9.0, 0.0, 0.0, 0.0]
    assert [s.engine_busy_fraction for s in steps] == [1.0, 1.0, 1.0, 1.0]  # decoding through every update
    # step 0's 8 slots over its 19.5 s: 8 requests until 2 s, then 7, 6, 5 at 2, 3, 4 s, 4 from 5 s; at 9 s s0-2-1
    # leaves and s0-4, s0-5 join: 7; 4 from 12 s, 3 from 14 s, 2 from 15 s:
    # (1 + 2 + 3 + 4 x 4 + 1 x 3 + 4 x 2 + 5 x 1 + 6 x 4.5) / (8 x 19.5) slots empty
    assert round(steps[0].bubble_ratio, 4) == round(65 / 156, 4)


def test_a_slower_rollout_and_a_small_sandbox_cost_what_they_cost_by_hand(tokenizer):
    """Two trajectories of a 2-token turn, a tool call (1 s) and a 3-token turn. Alone: the calls run together at
    2 s and both turns end at 6 s. A rollout twice as slow as its engine (decode steps of 2 s) and one sandbox
    worker: the first turns end at 4 s, the calls run 4-5 s and 5-6 s, A's turn decodes from 5 s, B joins at the
    step's end at 7 s, A ends at 11 s and B at 13 s."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    plan = Plan("sync", groups=1, group_size=2, max_tokens=100, prompt_tokens=10)
    costs = Costs(**{**TICKS, "tool_s": 1.0})

    def rollout_s(plan, costs):
        return simulate(simulate_steps(plan, costs, lambda traj: [2, 3], 1, tokenizer, eos))[0].rollout_s

    assert rollout_s(plan, costs) == 6.0
    assert rollout_s(replace(plan, tool_workers=1), replace(costs, rollout_factor=2.0)) == 13.0


def test_a_capped_cost_engine_queues_and_its_ticks_keep_every_length(tokenizer):
    """Four answers of 3, 10, 20 and 5 tokens, two decoded at a time: each writes its own length and ends with the end
    of turn, at the step it ends. Token by token: A ends at 3 s, C joins at once, B ends at 10 s, D joins then and
    ends at 15 s, C alone at 23 s. In ticks of 8 steps a join waits for the tick's end: C joins at 8 s, B ends at
    10 s, D joins at 16 s and ends at 21 s, C at 28 s."""
    from vlrl.plan.engine import CostEngine
    from vlrl.types import SamplingParams

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    lengths = {"g-0": 3, "g-1": 10, "g-2": 20, "g-3": 5}
    finished = {}

    async def main():
        for tick in (1, 8):
            engine = CostEngine(Costs(**TICKS), lambda traj: [lengths[traj]], eos, max_batch=2, tick=tick)
            loop, began = asyncio.get_running_loop(), asyncio.get_running_loop().time()

            async def one(traj):
                done = await engine.complete([1, 2, 3], [], SamplingParams(max_tokens=100), f"{traj}/t0")
                return done, loop.time() - began

            finished[tick] = await asyncio.gather(*(one(t) for t in lengths))
            await engine.close()

    simulate(main())
    for tick, results in finished.items():
        assert [len(c.token_ids) for c, _ in results] == [3, 10, 20, 5], tick
        assert all(c.token_ids[-1] == eos and c.finish_reason == "stop" for c, _ in results), tick
    assert [t for _, t in finished[1]] == [3.0, 10.0, 23.0, 15.0]
    assert [t for _, t in finished[8]] == [3.0, 10.0, 28.0, 21.0]


def test_a_padded_batch_costs_every_request_the_longest_context(tokenizer):
    """A second per token of context, nothing else. A (prompt 10, answer 2) and B (prompt 2, answer 6) together: summed,
    steps of 12 and 14 s end A at 26 s, then B alone 4 + 5 + 6 + 7 s ends at 48 s; left-padded to the longest (the
    HF engine), 2 x 10 and 2 x 11 end A at 42 s and B at 64 s. The same in ticks of 8 steps."""
    from vlrl.plan.engine import CostEngine
    from vlrl.types import SamplingParams

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers, prompts = {"g-0": 2, "g-1": 6}, {"g-0": [1] * 10, "g-1": [1, 2]}
    context = Costs(**{**TICKS, "decode_base_s": 0.0, "decode_per_context_token_s": 1.0})
    ends = {}

    async def main():
        for padded in (False, True):
            for tick in (1, 8):
                engine = CostEngine(replace(context, padded_batch=padded), lambda traj: [answers[traj]], eos, tick=tick)
                loop = asyncio.get_running_loop()
                began = loop.time()

                async def one(traj):
                    await engine.complete(prompts[traj], [], SamplingParams(max_tokens=100), f"{traj}/t0")
                    return loop.time() - began

                ends[padded, tick] = await asyncio.gather(*(one(t) for t in answers))
                stats[padded, tick] = engine.take_stats()
                await engine.close()

    stats = {}
    simulate(main())
    assert ends[False, 1] == ends[False, 8] == [26.0, 48.0]
    assert ends[True, 1] == ends[True, 8] == [42.0, 64.0]
    for (padded, tick), counted in stats.items():  # the engine's account: 6 steps, 2 x 2 + 4 rows, all of it decode
        seconds = 64.0 if padded else 48.0
        assert {k: v for k, v in counted.items() if k != "cache_positions"} == {
            "busy_s": seconds, "decode_s": seconds, "decode_steps": 6, "decode_rows": 8, "decode_positions": seconds,
            "prefill_s": 0.0, "prefill_positions": 12, "prefill_images": 0, "cache_s": 0.0}, (padded, tick)


def test_a_groups_same_prompts_are_computed_once(tokenizer):
    """Two samples of a prompt join together: its image is encoded once. Their first turns equally long (a tool call
    of the same few tokens), their second turns' prompts are taken as the same and computed once more, one image;
    first turns of different lengths bring an image each."""
    from vlrl.plan.engine import FILLER, IMAGE, CostEngine
    from vlrl.types import SamplingParams

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt, observation = [IMAGE] + [FILLER] * 9, [IMAGE] + [FILLER] * 4
    images = {}

    async def main():
        for firsts in ((3, 3), (3, 4)):
            turns = {f"g-{k}": [first, 5] for k, first in enumerate(firsts)}
            engine = CostEngine(Costs(**TICKS), lambda traj: turns[traj], eos, shared_prompt=len(prompt))
            sampling = SamplingParams(max_tokens=100)

            async def both_turns(traj):
                first = await engine.complete(prompt, [], sampling, f"{traj}/t0")
                await engine.complete(prompt + list(first.token_ids) + observation, [], sampling, f"{traj}/t1")

            await asyncio.gather(*(both_turns(traj) for traj in turns))
            images[firsts] = engine.take_stats()["prefill_images"]
            await engine.close()

    simulate(main())
    assert images == {(3, 3): 2, (3, 4): 3}


def test_a_padded_batch_is_rebuilt_as_requests_join_and_leave(tokenizer):
    """A decode step a second, a tenth of a second per position of a rebuilt cache. A (prompt 10, answer 2) and B
    (prompt 2, answer 6) join together: a cache of 2 rows x 10 (2 s), two steps end A at 4 s; B's cache rebuilt alone,
    1 x (2 + 2) (0.4 s), four more steps end B at 8.4 s. A paged cache (not padded) is never rebuilt: 2 and 6 s."""
    from vlrl.plan.engine import CostEngine
    from vlrl.types import SamplingParams

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers, prompts = {"g-0": 2, "g-1": 6}, {"g-0": [1] * 10, "g-1": [1, 2]}
    ends, stats = {}, {}

    async def main():
        for padded in (True, False):
            engine = CostEngine(Costs(**TICKS, padded_batch=padded, cache_per_position_s=0.1),
                                lambda traj: [answers[traj]], eos)
            loop = asyncio.get_running_loop()
            began = loop.time()

            async def one(traj):
                await engine.complete(prompts[traj], [], SamplingParams(max_tokens=100), f"{traj}/t0")
                return loop.time() - began

            ends[padded] = await asyncio.gather(*(one(t) for t in answers))
            stats[padded] = engine.take_stats()
            await engine.close()

    simulate(main())
    assert ends[True] == pytest.approx([4.0, 8.4]) and ends[False] == [2.0, 6.0]
    assert stats[True]["cache_positions"] == 24 and stats[True]["cache_s"] == pytest.approx(2.4)
    assert stats[True]["busy_s"] == pytest.approx(6 + 2.4) and stats[False]["cache_positions"] == 0


def test_a_prefill_encodes_the_images_it_brings_and_again_after_an_update(tokenizer):
    """Ten seconds an image, one a decode step. Turn 0 (the chart) ends at 11 s; turn 1 reuses it and encodes only the
    tool's image (22 s); after a weight update nothing is reused and turn 2 encodes all three again, the chart and two
    tool images (53 s)."""
    from vlrl.plan.engine import FILLER, IMAGE, CostEngine
    from vlrl.types import SamplingParams

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ends = []

    async def main():
        engine = CostEngine(replace(Costs(**TICKS), prefill_per_image_s=10.0), lambda traj: [1, 1, 1], eos)
        loop = asyncio.get_running_loop()
        began, ids = loop.time(), [IMAGE, FILLER, FILLER]
        for turn in range(3):
            if turn == 2:
                await engine.update_weights({}, 1)
            done = await engine.complete(ids, [], SamplingParams(max_tokens=100), f"g-0/t{turn}")
            ends.append(loop.time() - began)
            ids = ids + list(done.token_ids) + [IMAGE, FILLER]
        await engine.close()

    simulate(main())
    assert ends == [11.0, 22.0, 53.0]


def test_a_replayed_run_gives_each_trajectory_the_shape_it_had_there(tmp_path, tokenizer):
    """lengths.jsonl names each trained trajectory; the twin of the run's config gives each id its own turns, so
    every simulated step faces the work the measured step did (a draw from the pool could put a step's longest
    answer in another step)."""
    from vlrl.plan.workloads import from_run

    steps = [{"trajectories": [[10, [3], 0], [10, [40], 0], [10, [5], 0], [10, [6], 0]],
              "ids": ["s0-0-0", "s0-0-1", "s0-1-0", "s0-1-1"]},
             {"trajectories": [[10, [2, 7], 5], [10, [4], 0], [10, [9], 0], [10, [8], 0]],
              "ids": ["s1-0-0", "s1-0-1", "s1-1-0", "s1-1-1"]}]
    (tmp_path / "lengths.jsonl").write_text("".join(json.dumps({"step": k, **r}) + "\n" for k, r in enumerate(steps)))
    (tmp_path / "config.yaml").write_text("rollout: {max_new_tokens: 50}\n")
    workload = from_run(tmp_path)
    plan = Plan("sync", groups=2, group_size=2, max_tokens=100, prompt_tokens=10)
    out = simulate(simulate_steps(plan, Costs(**TICKS), workload.script(), 3, tokenizer,
                                  tokenizer.convert_tokens_to_ids("<|im_end|>")))
    assert [s.policy_tokens for s in out[:2]] == [3 + 40 + 5 + 6, 2 + 7 + 4 + 9 + 8]
    assert [s.rollout_s for s in out[:2]] == [40.0, 9.0]  # a decode step a second: the longest answer
    assert workload.script()("s2-0-0") in [list(t) for t in workload.turns]  # not in the run: drawn from its shapes
    # under twice the run's cap every id keeps its shape at twice the tokens
    doubled = workload.scaled(100)
    assert doubled.script()("s0-0-1") == [80] and doubled.script()("s1-0-0") == [4, 14]
    assert workload.max_tokens == 50 and doubled.max_tokens == 100


def test_a_workload_scaled_to_a_recipes_cap_keeps_its_shape():
    """A GPU projection turns the tiny tokenizer's lengths into a recipe's: the median and the tail move together,
    nothing passes the new cap."""
    from vlrl.plan.workloads import named

    tiny = named("longtail-cot")
    real = tiny.scaled(16 * tiny.max_tokens)
    finals = sorted(t[-1] for t in tiny.turns)
    scaled = sorted(t[-1] for t in real.turns)
    assert scaled[len(scaled) // 2] == 16 * finals[len(finals) // 2]
    assert max(scaled) == 16 * max(finals) <= real.max_tokens
    assert "x16 to a 16384-token cap" in real.source
    assert min(t for s in tiny.scaled(8).turns for t in s) >= 1 and max(t for s in tiny.scaled(8).turns for t in s) == 8
    with pytest.raises(ValueError, match="a turn cap must be >= 1 token, got 0"):
        tiny.scaled(0)


def test_an_update_costs_what_the_trainers_micro_batches_compute():
    costs = Costs(0.0, 0.0, 0.0, 0.0, update_base_s=0.5, update_per_token_s=1e-3, sync_s=0.0)
    # a budget of 40 tokens cuts [19, 20] and [100]; padded, the 19-token row costs as a 20-token one
    assert update_positions([100, 19, 20], 40, padded=True) == 140
    assert update_positions([100, 19, 20], 40, padded=False) == 139  # packed: only real positions
    assert costs.update_s(139) == pytest.approx(0.5 + 0.139)
    assert costs.update_s(139, beside_decoding=True) == costs.update_s(139)  # no contention measured


def test_calibrations_fit_keeps_every_cost_non_negative():
    from vlrl.plan.calibrate import fit, line

    xs = [1.0, 2.0, 3.0, 4.0]
    assert fit([[1.0, x, x * x] for x in xs], [2 + 3 * x + 0.5 * x * x for x in xs]) == pytest.approx([2, 3, 0.5])
    # a line that would cross below zero at no work: no negative fixed cost, the slope through the origin instead
    assert line(xs, [3 * x - 1 for x in xs]) == pytest.approx((0.0, sum(x * (3 * x - 1) for x in xs) / 30))
    assert fit([[1.0, x] for x in xs], [-x for x in xs]) == [0.0, 0.0]  # costs that shrink with work: none


def test_the_engines_costs_are_fitted_back_from_the_counters_it_logged(tokenizer):
    """The twin's cost engine logs the HF engine's counters; fitted to them step by step, `--fit` finds the costs
    the steps were charged (the overlap schedule with a streamed verifier: prefills, images, joins and leaves)."""
    from vlrl.plan.calibrate import engine_fit

    truth = dict(decode_base_s=2e-3, decode_per_request_s=3e-4, decode_per_context_token_s=5e-7,
                 prefill_per_token_s=4e-5, prefill_per_image_s=2e-2, cache_per_position_s=1e-6)
    costs = Costs(**{**TICKS, **truth}, padded_batch=True)
    lengths = {f"s{s}-{g}": [7 + 13 * ((s * 5 + g * 3 + m) % 11) for m in range(3)] for s in range(8) for g in range(4)}
    plan = Plan("overlap", groups=2, group_size=3, extra=2, verifier=True, chunk_tokens=16, max_tokens=400,
                prompt_tokens=50, observation_tokens=20)
    steps = simulate(simulate_steps(plan, costs, scripted(lengths), 6, tokenizer,
                                    tokenizer.convert_tokens_to_ids("<|im_end|>")))
    records = [{f"engine/{name}": value for name, value in s.engine.items()} for s in steps]
    assert all(r["engine/prefill_images"] > 0 and r["engine/cache_positions"] > 0 for r in records)
    assert engine_fit(records) == pytest.approx(truth, rel=1e-6)
    with pytest.raises(ValueError, match="missing.*cache_s"):
        engine_fit([{k: v for k, v in r.items() if k != "engine/cache_s"} for r in records])


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


def test_the_gpu_preset_derives_its_costs_from_its_cited_figures():
    from vlrl.plan.presets import preset

    gpus = preset("qwen2.5-vl-7b-8xh100")
    placements = gpus.placements("qwen2.5-vl-7b-8xh100")
    assert set(placements) == {"colocated", "disaggregated 2:6", "disaggregated", "disaggregated 6:2"}
    # a decode step reads the bf16 weights (2 x 8.29e9 bytes) over a tensor-parallel pair's 2 x 3.35 TB/s at 77%
    assert placements["colocated"].decode_base_s == pytest.approx(2 * 8.29e9 / (2 * 3.35e12 * 0.77))
    # the trainer at 7,500 tokens/s per GPU, a third more for the old policy's forward, over its GPUs
    assert placements["disaggregated"].update_per_token_s == pytest.approx(4 / 3 / (7500 * 4))
    few, many = placements["disaggregated 2:6"], placements["disaggregated 6:2"]
    assert few.decode_per_request_s == pytest.approx(3 * many.decode_per_request_s)
    assert many.update_per_token_s == pytest.approx(3 * few.update_per_token_s)
    assert placements["colocated"].sync_s > placements["disaggregated"].sync_s  # waking vs an NCCL broadcast
    assert (gpus.slots("colocated"), gpus.slots("disaggregated 2:6")) == (4 * 1024, 1024)
    assert all("projection" in c.source for c in placements.values())
    with pytest.raises(ValueError, match="unknown preset 'qwen-on-a-toaster'; choose from qwen2.5-vl-7b-8xh100"):
        preset("qwen-on-a-toaster")


def test_plan_projects_a_gpu_preset_and_recommends_a_split(tiny_dir):
    out = vlrl("plan", "--preset", "qwen2.5-vl-7b-8xh100", "--groups", "16", "--workload", "longtail-cot",
               "--steps", "1", "--model", str(tiny_dir), "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert {"speedup_intra_inter", "speedup_disaggregated", "efficiency_best"} <= set(figures)
    assert 0 < figures["efficiency_best"] <= 1
    assert figures["recommended"]["placement"] in ("colocated", "disaggregated 2:6", "disaggregated",
                                                   "disaggregated 6:2")
    assert "16 groups x 5" in out and "a projection" in out
    assert "to a 2048-token cap" in out  # verl's recipe's max_response_length, not the tiny tokenizer's lengths
    bad = vlrl("plan", "--preset", "qwen2.5-vl-7b-8xh100", "--max-tokens", "0", "--model", str(tiny_dir), check=False)
    assert bad.returncode == 2 and "a turn cap must be >= 1 token, got 0" in bad.stderr


@pytest.mark.slow
def test_calibrate_measures_this_machine_into_a_cost_file_plan_reads(tmp_path, tiny_dir):
    out = vlrl("plan", "calibrate", "--costs", str(tmp_path / "costs.json"), "--model", str(tiny_dir)).stdout
    placements = load(tmp_path / "costs.json")
    for costs in placements.values():
        # a CPU pays for every request it decodes (per request, or through the context the batch attends to)
        assert costs.decode_step_s(64, 64 * 200) > costs.decode_step_s(1, 200) > 0
        assert costs.update_per_token_s > 0 and costs.tool_s > 0 and "calibrate" in costs.source
        assert costs.rollout_factor > 0  # measured against the same runs' rollouts
        assert costs.update_contention > 0  # a run with the engine decoding beside its updates
        assert costs.padded_batch  # the HF engine's batch: every row attends to the longest one's length
        assert costs.padded_update  # the trainer pads its micro-batches
        assert costs.prefill_per_image_s > 0  # a chart through the processor and the vision encoder
    assert "colocated" in out and "disaggregated" in out
    result = vlrl("plan", "--costs", str(tmp_path / "costs.json"), "--steps", "1", "--model", str(tiny_dir))
    assert "recommended: " in result.stdout
