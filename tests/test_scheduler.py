"""The overlap scheduler: batches close at B whole groups, the rest are paused, resumed, or dropped as stale."""

from __future__ import annotations

import asyncio
import pickle
from itertools import islice

import pytest

from scripted_engine import ScriptedEngine
from vlrl.bench.parity import logprob_parity
from vlrl.builtin.envs.visual_tool import VisualToolEnv
from vlrl.builtin.tasks.charts import synthetic_charts
from vlrl.builtin.tasks.rewards import chartqa_relaxed
from vlrl.config import EnvConfig, SandboxConfig
from vlrl.rollout.manager import RolloutManager
from vlrl.rollout.scheduler import OverlapScheduler
from vlrl.types import SamplingParams

NO_TOOLS = EnvConfig(tools=[], max_turns=1, sandbox=SandboxConfig(workers=1))

# answer lengths in tokens, per trajectory ("s{step}-{group}-{member}"), and the schedule they force
# (B = 2 groups per step, 2 extra in flight, at most 2 steps carried over; G = 2):
#   step 0: s0-0 ends at tick 5, s0-2 at 9            -> trains s0-0, s0-2; pauses s0-1, s0-3 at 9 tokens
#   step 1: resumed + s1-0, s1-1 (end 3 and 5 ticks later, tick 14)
#                                                       -> trains s1-0, s1-1; s0-1, s0-3 carried twice
#   step 2: + s2-0 (30 ticks: tick 44), s2-1 (50); s0-1 ends at tick 40
#                                                       -> trains s0-1 (older first) and s2-0;
#                                                          s0-3 carried a 3rd time: dropped (staleness);
#                                                          s2-1 carried once
LENGTHS = {
    "s0-0": (3, 5), "s0-1": (40, 2), "s0-2": (4, 9), "s0-3": (60, 60),
    "s1-0": (2, 3), "s1-1": (5, 1),
    "s2-0": (30, 30), "s2-1": (50, 50),
}


def charts() -> list:
    return list(islice(synthetic_charts(seed=0, kinds=("v_bar",)), 8))


def scripted_manager(engine, env, tokenizer) -> RolloutManager:
    """G = 2 trajectories per group, rewarded as each ends."""
    return RolloutManager(engine, env, tokenizer, chartqa_relaxed, SamplingParams(max_tokens=100), 2, "async")


def length_of(traj_id: str) -> int:
    group, member = traj_id.rsplit("-", 1)
    return LENGTHS[group][int(member)]


def test_the_schedule_under_known_lengths_is_the_hand_computed_one(run, tokenizer, vision):
    engine = ScriptedEngine(length_of, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    drawn = charts()
    samples = iter(drawn)

    async def go():
        async with VisualToolEnv(NO_TOOLS, tokenizer, vision) as env:
            manager = scripted_manager(engine, env, tokenizer)
            scheduler = OverlapScheduler(manager, groups=2, extra=2, max_staleness=2)
            steps = []
            for step in range(3):
                result, stats = await scheduler.step(lambda n: list(islice(samples, n)), seed=step, tag=f"s{step}")
                steps.append((result, stats, engine.ticks))
                await engine.update_weights({}, step + 1)
            left = [f.sample.id for f in scheduler.flights]
            await scheduler.close()
            return steps, left, manager.timeline

    steps, left, timeline = run(go())
    trained = [[t.id.rsplit("-", 1)[0] for t in r.trajectories[::2]] for r, _, _ in steps]
    assert trained == [["s0-0", "s0-2"], ["s1-0", "s1-1"], ["s0-1", "s2-0"]]
    assert [ticks for _, _, ticks in steps] == [9, 14, 44]
    assert [s.started for _, s, _ in steps] == [4, 2, 2]
    assert [s.carried for _, s, _ in steps] == [2, 2, 1]
    assert [dict(r.dropped) for r, _, _ in steps] == [{}, {}, {"staleness": 2}]
    assert dict(steps[2][1].staleness) == {2: 1, 0: 1}
    # s0-1's tokens: 9 + 2 sampled two versions back, 5 one back; s0-1-0's last 26 and s2-0's 60 by the policy trained
    assert dict(steps[2][1].token_staleness) == {0: 86, 1: 5, 2: 11}
    # every group that entered was trained once, dropped (s0-3: the 4th drawn) or is still in flight (s2-1)
    trained_ids = [g.sample.id for r, _, _ in steps for g in r.groups]
    assert len(trained_ids) == len(set(trained_ids)) == 6
    assert sorted(trained_ids + [drawn[3].id] + left) == sorted(s.id for s in drawn) and left == [drawn[7].id]
    # s0-1-0 was paused twice: its tokens run on from where they stopped, each with its version
    resumed = next(t for t in steps[2][0].trajectories if t.id == "s0-1-0")
    assert resumed.deferred_steps == 2
    assert [v for v in resumed.versions if v >= 0] == [0] * 9 + [1] * 5 + [2] * 26
    assert sum(resumed.loss_mask) == 40
    # the timeline shows it: decoding, waiting out two weight updates, decoding again, never two at once
    spans = sorted((s for s in timeline.spans if s.track == "s0-1-0"), key=lambda s: s.start)
    assert [s.phase for s in spans] == ["decode", "paused", "decode", "paused", "decode"]
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))


def test_by_default_nothing_is_dropped_and_the_run_end_counts_what_is_in_flight(run, tokenizer, vision):
    engine = ScriptedEngine(length_of, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    samples = iter(charts())

    async def go():
        async with VisualToolEnv(NO_TOOLS, tokenizer, vision) as env:
            manager = scripted_manager(engine, env, tokenizer)
            scheduler = OverlapScheduler(manager, groups=2, extra=2)
            steps = []
            for step in range(3):
                steps.append(await scheduler.step(lambda n: list(islice(samples, n)), seed=step, tag=f"s{step}"))
                await engine.update_weights({}, step + 1)
            return steps, [f.sample.id for f in scheduler.flights], await scheduler.close()

    steps, left, closed = run(go())
    # the same schedule as with a cap of 2, except that s0-3 (60 tokens) is kept, not dropped as stale
    trained = [[t.id.rsplit("-", 1)[0] for t in r.trajectories[::2]] for r, _ in steps]
    assert trained == [["s0-0", "s0-2"], ["s1-0", "s1-1"], ["s0-1", "s2-0"]]
    assert all(not r.dropped for r, _ in steps)
    assert closed == len(left) == 2  # s0-3 and s2-1: in flight when the run ends, counted by close


def test_a_checkpoint_keeps_the_paused_tokens_and_the_resumed_run_decodes_only_the_rest(run, tokenizer, vision):
    """The hand-computed schedule again, killed after step 0: its groups in flight go through pickle (as in a
    checkpoint) to a new manager and scheduler, and the run goes on exactly as the uninterrupted one did."""
    engine = ScriptedEngine(length_of, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    samples = iter(charts())

    def draw(n):
        return list(islice(samples, n))

    async def go():
        async with VisualToolEnv(NO_TOOLS, tokenizer, vision) as env:
            manager = scripted_manager(engine, env, tokenizer)
            scheduler = OverlapScheduler(manager, groups=2, extra=2)
            first, _ = await scheduler.step(draw, seed=0, tag="s0")
            await engine.update_weights({}, 1)
            kept = pickle.dumps(scheduler.pending())
            await scheduler.close()  # the process is killed
        async with VisualToolEnv(NO_TOOLS, tokenizer, vision) as env:
            manager = scripted_manager(engine, env, tokenizer)
            scheduler = OverlapScheduler(manager, groups=2, extra=2)
            scheduler.readmit(pickle.loads(kept), seed=1, tag="s1-resumed")
            steps = [first]
            for step in (1, 2):
                steps.append((await scheduler.step(draw, seed=step, tag=f"s{step}"))[0])
                await engine.update_weights({}, step + 1)
            await scheduler.close()
            return pickle.loads(kept), steps

    kept, steps = run(go())
    (_, _, s0_1), (_, _, s0_3) = kept
    assert [type(w).__name__ for w in s0_1] == ["KeptWork", "Trajectory"]  # s0-1-1 had ended (2 tokens)
    assert s0_1[0].tokens == 9 and s0_1[0].partial.versions == (0,) * 9 and s0_3[0].tokens == s0_3[1].tokens == 9
    trained = [[t.id.rsplit("-", 1)[0] for t in r.trajectories[::2]] for r in steps]
    assert trained == [["s0-0", "s0-2"], ["s1-0", "s1-1"], ["s0-1", "s2-0"]]
    resumed = next(t for t in steps[2].trajectories if t.id == "s0-1-0")
    assert [v for v in resumed.versions if v >= 0] == [0] * 9 + [1] * 5 + [2] * 26 and resumed.deferred_steps == 2
    assert engine.made["s0-1-0"] == sum(resumed.loss_mask) == 40  # not one token decoded twice


# the disaggregated mode (B = 2, Δ = 2, G = 2): the engine decodes through each 10-tick update, and the flight is
# topped up at each close, so the next step's groups decode through the update too
#   step 0: s0-0 ends at tick 5, s0-2 at 9 -> trains them; s0-1, s0-3 go on decoding (no pause), s0-4 and s0-5
#           start at 9; the update runs ticks 10-19 at version 0, in which s0-3 (12) and s0-4 (15) end
#   step 1: closes at once (tick 19) on s0-3 (carried once) and s0-4; s1-0, s1-1 start and end in the update
#   step 2: closes at once (tick 29) on s1-0, s1-1: s0-1 (40) and s0-5 (34) are still decoding
#   step 3: s0-1-0 reaches 40 tokens at tick 40: trains s0-1 (carried three times) and s0-5 (twice)
KEEP_DECODING = {
    "s0-0": (3, 5), "s0-1": (40, 2), "s0-2": (4, 9), "s0-3": (12, 12), "s0-4": (5, 6), "s0-5": (25, 3),
    "s1-0": (2, 3), "s1-1": (5, 1),
    "s2-0": (30, 30), "s2-1": (50, 50), "s3-0": (60, 60), "s3-1": (60, 60),
}


def test_the_disaggregated_schedule_under_known_lengths_is_the_hand_computed_one(run, tokenizer, vision):
    def lengths(traj_id):
        group, member = traj_id.rsplit("-", 1)
        return KEEP_DECODING[group][int(member)]

    engine = ScriptedEngine(lengths, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    samples = iter(charts() * 2)

    async def go():
        async with VisualToolEnv(NO_TOOLS, tokenizer, vision) as env:
            manager = scripted_manager(engine, env, tokenizer)
            scheduler = OverlapScheduler(manager, groups=2, extra=2, keep_decoding=True)
            steps = []
            for step in range(4):
                result, stats = await scheduler.step(lambda n: list(islice(samples, n)), seed=step, tag=f"s{step}")
                steps.append((result, stats, engine.ticks))
                await engine.advance(10)  # the update, while the engine decodes
                await engine.update_weights({}, step + 1)
            await scheduler.close()
            return steps

    steps = run(go())
    trained = [[t.id.rsplit("-", 1)[0] for t in r.trajectories[::2]] for r, _, _ in steps]
    assert trained == [["s0-0", "s0-2"], ["s0-3", "s0-4"], ["s1-0", "s1-1"], ["s0-1", "s0-5"]]
    assert [ticks for _, _, ticks in steps] == [9, 19, 29, 40]  # steps 1 and 2 find their batch already whole
    assert [s.started for _, s, _ in steps] == [6, 2, 2, 2]  # topped up at each close
    assert [s.paused for _, s, _ in steps] == [0, 0, 0, 0]  # nothing was aborted
    assert [dict(s.staleness) for _, s, _ in steps] == [{0: 2}, {1: 1, 0: 1}, {0: 2}, {3: 1, 2: 1}]
    s0_1 = next(t for t in steps[3][0].trajectories if t.id == "s0-1-0")
    assert s0_1.deferred_steps == 3
    assert [v for v in s0_1.versions if v >= 0] == [0] * 19 + [1] * 10 + [2] * 10 + [3]
    s0_4 = next(t for t in steps[1][0].trajectories if t.id == "s0-4-1")
    assert [v for v in s0_4.versions if v >= 0] == [0] * 6  # decoded in step 0's update, trained a version on
    # step 3 trains at version 3: s0-1's 19 + 2 tokens, s0-5's 10 + 3 three versions back, then 10 + 10, 10 + 5, 1
    assert dict(steps[3][1].token_staleness) == {0: 1, 1: 15, 2: 20, 3: 34}


@pytest.fixture(params=["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


def test_a_paused_turn_resumes_from_its_tokens_under_the_new_version(engine, run, tokenizer, vision, trainer_model):
    sample = next(iter(synthetic_charts(seed=4, kinds=("v_bar",))))
    sampling = SamplingParams(max_tokens=120, temperature=1.0, suppress_token_ids=engine.eos_ids)

    async def go():
        async with VisualToolEnv(NO_TOOLS, tokenizer, vision) as env:
            manager = RolloutManager(engine, env, tokenizer, chartqa_relaxed, sampling, 2, "async")
            tasks = manager.start_group(sample, "pause", seed=0)
            before: dict = {}
            pauses = 0
            while not any(c.token_ids for c in before.values()):  # pause once decoding has begun
                await asyncio.sleep(0.2)
                running = dict(manager._running)
                await manager.pause()
                pauses += 1
                before = {t: (await engine.abort(rid)) for t, rid in running.items()}
                if not any(c.token_ids for c in before.values()):
                    manager.resume()
            version = engine.version + 1
            await engine.update_weights(trainer_model.state_dict(), version)  # same values, new version
            manager.resume()
            return before, await asyncio.gather(*tasks), version, pauses

    before, trajs, version, pauses = run(go())
    assert any(0 < len(c.token_ids) < 120 for c in before.values())
    for traj in trajs:
        policy = traj.segments[1]
        assert len(policy.token_ids) == 120  # max_tokens counts the tokens from before the pause
        old = before.get(traj.id)
        if old is None:
            continue
        k = len(old.token_ids)
        assert k < 120 and traj.deferred_steps == pauses
        assert policy.token_ids[:k] == old.token_ids and policy.logprobs[:k] == old.logprobs
        assert policy.versions == (version - 1,) * k + (version,) * (120 - k)
    parity = logprob_parity(trainer_model, vision, trajs)  # the resumed requests saw the exact prefix
    assert parity.mean_abs < 1e-3, parity


def test_extra_groups_grow_while_the_reward_rises_and_shrink_to_zero_after():
    from vlrl.rollout.scheduler import ExtraTuner

    tuner = ExtraTuner(extra=2, ceiling=4, stride=1, window=3)
    rewards = [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4]
    # slopes over the last 3 from the 3rd step: + + + (ceiling 4) then 0.4,0.5,0.5 + ; 0.5,0.5,0.4 - ; - ; - ; 0 ; 0
    assert [tuner.update(r) for r in rewards] == [2, 2, 3, 4, 4, 4, 3, 2, 1, 0, 0]


def test_a_trajectory_paused_inside_a_tool_call_keeps_the_result_and_runs_the_tool_once(run, tokenizer, vision):
    """The call is written, the pause comes while the (1 s) tool runs: the tool finishes, its
    observation is kept, and the next turn starts only after ``resume``."""
    call = tokenizer.encode("```python\nimport time\ntime.sleep(1.0)\ndisplay(image_1)\n```")
    answer = tokenizer.encode("FINAL ANSWER: 7")
    engine = ScriptedEngine(length_of, tokenizer.convert_tokens_to_ids("<|im_end|>"),
                            tokens_of=lambda rid: call if rid.endswith("/t0") else answer)
    sample = next(iter(synthetic_charts(seed=1, kinds=("v_bar",))))
    env_config = EnvConfig(tools=[], action_formats=["code"], max_turns=2, sandbox=SandboxConfig(workers=1))

    async def go():
        async with VisualToolEnv(env_config, tokenizer, vision) as env:
            manager = RolloutManager(engine, env, tokenizer, chartqa_relaxed, SamplingParams(max_tokens=100), 1,
                                     "async")
            [task] = manager.start_group(sample, "tool", seed=0)
            while "tool-0/t0" not in engine._out or "tool-0/t0" in engine._queues or manager._running:
                await asyncio.sleep(0.01)  # until the call is written and handed to the sandbox
            await asyncio.sleep(0.2)
            aborted = await manager.pause()
            await asyncio.sleep(1.5)  # the tool ends meanwhile; the trajectory must wait
            started_while_paused = sorted(engine._out)
            manager.resume()
            return aborted, started_while_paused, await task, manager.timeline

    aborted, started_while_paused, traj, timeline = run(go())
    assert aborted == 0 and started_while_paused == ["tool-0/t0"]
    assert traj.deferred_steps == 1
    assert [s.kind for s in traj.segments] == ["prompt", "policy", "observation", "policy"]
    assert len(traj.images) == 2  # the chart and the tool's displayed image, kept across the pause
    assert traj.tool_stats()["tool_calls"] == 1 and traj.tool_stats()["tool_errors"] == 0
    spans = sorted((s for s in timeline.spans if s.track == "tool-0"), key=lambda s: s.start)
    assert [s.phase for s in spans] == ["decode", "tool", "paused", "decode"]
    tool, paused = spans[1], spans[2]
    assert tool.end - tool.start >= 1.0 and paused.start >= tool.end and paused.end - paused.start > 0.3


def test_a_checkpoint_from_before_kept_work_is_refused_with_what_to_do(run, tokenizer, vision):
    engine = ScriptedEngine(length_of, tokenizer.convert_tokens_to_ids("<|im_end|>"))

    async def go():
        async with VisualToolEnv(NO_TOOLS, tokenizer, vision) as env:
            scheduler = OverlapScheduler(scripted_manager(engine, env, tokenizer), groups=2, extra=2)
            scheduler.readmit([(charts()[0], 1)], seed=0, tag="old")

    with pytest.raises(ValueError, match=r"group in flight 0 has 2 fields, not \(sample, steps carried, kept work\)"):
        run(go())
