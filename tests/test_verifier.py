"""The model-based verifier on both engines: streamed in chunks it scores exactly as at once."""

from __future__ import annotations

import asyncio
import math
from itertools import islice

import pytest
import torch

from vlrl.bench.parity import two_turn_rollout
from vlrl.config import QUESTION
from vlrl.engines.hf import HFEngine
from vlrl.rewards.verifier import Verifier
from vlrl.trainer.logprobs import last_hidden

ENGINES = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture
def trajectory(engine, run, tokenizer, vision):
    """A two-turn trajectory with two images (the question's and a tool's), sampled on ``engine``."""
    return run(two_turn_rollout(engine, tokenizer, vision, "verifier-traj", seed=3))


def pieces(traj, chunk):
    """(ids, images) in the order the rollout manager hands them over: inputs whole, policy turns in chunks."""
    for seg in traj.segments:
        if seg.kind != "policy":
            yield list(seg.token_ids), list(seg.images)
            continue
        for i in range(0, len(seg.token_ids), chunk):
            yield list(seg.token_ids[i: i + chunk]), []


async def streamed(verifier, traj, chunk, traj_id):
    for ids, images in pieces(traj, chunk):
        await verifier.extend(traj_id, ids, images)
    return await verifier.finish(traj_id)


def test_chunks_of_any_size_score_as_the_whole_trajectory(engine, run, tokenizer, trajectory):
    verifier = Verifier(engine, tokenizer)
    run(engine.reset_prefix_cache())  # each way computes from scratch, none reuses another's KV
    whole = run(verifier.score("whole", trajectory.token_ids, trajectory.images))
    assert 0.0 < whole.score < 1.0 and whole.early_tokens == 0
    for chunk in (1, 7, 64):
        run(engine.reset_prefix_cache())
        verdict = run(streamed(verifier, trajectory, chunk, f"chunks-{chunk}"))
        assert abs(verdict.score - whole.score) < 1e-5, (chunk, verdict.score, whole.score)
        assert verdict.early_tokens >= len(trajectory.token_ids) // 2  # the prefill happened while streaming
        assert verdict.late_tokens < whole.late_tokens


def test_chunks_of_many_trajectories_prefill_together_and_score_as_each_alone(engine, run, tokenizer, vision):
    """The rollout's situation: many trajectories streaming at once. On the HF engine their chunks share forwards
    (more rows than forwards); on both engines each score equals its own one-shot score."""
    trajs = [run(two_turn_rollout(engine, tokenizer, vision, f"many-{seed}", seed=seed)) for seed in range(4)]
    verifier = Verifier(engine, tokenizer)
    run(engine.reset_prefix_cache())
    alone = [run(verifier.score(f"alone-{i}", t.token_ids, t.images)).score for i, t in enumerate(trajs)]
    run(engine.reset_prefix_cache())
    engine.take_stats()

    async def together():
        return await asyncio.gather(*(streamed(verifier, t, 8, f"together-{i}") for i, t in enumerate(trajs)))

    verdicts = run(together())
    for verdict, score in zip(verdicts, alone):
        assert abs(verdict.score - score) < 1e-5, (verdict.score, score)
        assert verdict.early_tokens > 0
    if isinstance(engine, HFEngine):  # it counts its forwards
        stats = engine.take_stats()
        assert stats["prefill_rows"] >= 1.5 * stats["prefill_forwards"], stats


def test_hf_finish_computes_only_the_question(hf_engine, run, tokenizer, trajectory):
    verifier = Verifier(hf_engine, tokenizer)
    run(hf_engine.reset_prefix_cache())
    whole = run(verifier.score("hf-whole", trajectory.token_ids, trajectory.images))
    run(hf_engine.reset_prefix_cache())
    verdict = run(streamed(verifier, trajectory, 16, "hf-chunks"))
    question = len(whole_ids(tokenizer, trajectory)) - len(trajectory.token_ids)
    assert verdict.late_tokens == question
    assert whole.late_tokens == len(trajectory.token_ids) + question


def whole_ids(tokenizer, traj):
    """The trajectory, its turn closed if it was cut off, then the verifier's question in Qwen's chat format."""
    ids = list(traj.token_ids)
    closing = "" if tokenizer.convert_ids_to_tokens(ids[-1]) == "<|im_end|>" else "<|im_end|>"
    turn = f"{closing}\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    return ids + tokenizer.encode(turn, add_special_tokens=False)


def test_score_is_p_yes_over_yes_and_no_from_the_trainer_forward(hf_engine, run, tokenizer, vision, trajectory,
                                                                trainer_model):
    verifier = Verifier(hf_engine, tokenizer, yes=("Yes", " Yes"), no=("No",))
    verdict = run(verifier.score("vs-trainer", trajectory.token_ids, trajectory.images))
    with torch.no_grad():
        hidden, _, _ = last_hidden(trainer_model, vision, [(whole_ids(tokenizer, trajectory), trajectory.images)])
        probs = torch.softmax(trainer_model.lm_head(hidden[0, -1]).double(), dim=-1)
    yes = probs[tokenizer.encode("Yes")[0]] + probs[tokenizer.encode(" Yes")[0]]
    no = probs[tokenizer.encode("No")[0]]
    assert math.isclose(verdict.score, float(yes / (yes + no)), abs_tol=1e-5)


def test_bad_verifier_input_is_named(hf_engine, run, tokenizer):
    with pytest.raises(ValueError, match="yes word 'Yes indeed' is [0-9]+ tokens"):
        Verifier(hf_engine, tokenizer, yes=("Yes indeed",))
    with pytest.raises(ValueError, match="share a token"):
        Verifier(hf_engine, tokenizer, yes=("Yes",), no=("Yes",))
    verifier = Verifier(hf_engine, tokenizer)
    with pytest.raises(KeyError, match="nothing was extended for trajectory 'never-fed'"):
        run(verifier.finish("never-fed"))
    with pytest.raises(ValueError, match="no Yes/No probability for trajectory 't'"):
        verifier.reading.score("t", [-math.inf, -math.inf])


def verified_rollout(run, engine, tokenizer, vision, schedule, chunk, weight=0.5):
    from vlrl.builtin.envs.visual_tool import VisualToolEnv
    from vlrl.builtin.tasks.charts import synthetic_charts
    from vlrl.builtin.tasks.rewards import chartqa_relaxed
    from vlrl.config import EnvConfig, SandboxConfig
    from vlrl.rollout.manager import RolloutManager
    from vlrl.types import SamplingParams

    samples = list(islice(synthetic_charts(seed=5, kinds=("v_bar",)), 3))
    config = EnvConfig(max_turns=2, invalid_action="retry", sandbox=SandboxConfig(workers=1))

    async def go():
        async with VisualToolEnv(config, tokenizer, vision) as env:
            manager = RolloutManager(engine, env, tokenizer, chartqa_relaxed, SamplingParams(max_tokens=24), 2,
                                     schedule, Verifier(engine, tokenizer), weight, chunk)
            return await manager.rollout(samples, seed=1)

    return run(go())


@pytest.mark.parametrize("schedule, chunk", [("async", 4), ("sync", 4), ("async", 0)])
def test_rollout_rewards_mix_the_verdict_and_streaming_changes_no_score(hf_engine, run, tokenizer, vision, schedule,
                                                                        chunk):
    result = verified_rollout(run, hf_engine, tokenizer, vision, schedule, chunk)
    trajs = result.trajectories
    assert len(trajs) == 6 and not result.dropped
    fresh = Verifier(hf_engine, tokenizer)
    for t in trajs:
        again = run(fresh.score(f"again-{t.id}", t.token_ids, t.images)).score
        assert abs(t.reward_parts["verifier"] - again) < 1e-5
        assert math.isclose(t.reward, 0.5 * t.reward_parts["accuracy"] + 0.5 * again, abs_tol=1e-5)
        if not (schedule == "async" and chunk > 0):  # sync and chunk 0 read it whole at the end
            assert t.timings.verifier_early_tokens == 0
    # the policy judging itself on its own engine reads the KV its turns left, kept or still running (streamed),
    # and computes little more than the question: under a tenth of the trajectories' tokens
    # streamed, the policy judging itself on its own engine reads the KV its turns computed (running or kept), so
    # its pieces cost fewer tokens than the policy wrote, never the trajectory again
    assert sum(t.timings.verifier_early_tokens for t in trajs) <= sum(sum(t.loss_mask) for t in trajs)


def test_the_feed_hands_over_turns_in_chunks_and_observations_with_their_images(hf_engine, run, tokenizer,
                                                                                trajectory):
    """The rollout manager's calls on a two-turn, two-image trajectory, replayed as it grew."""
    from vlrl.rollout.feed import VerifierFeed
    from vlrl.types import Trajectory

    verifier = Verifier(hf_engine, tokenizer)
    run(hf_engine.reset_prefix_cache())
    whole = run(verifier.score("feed-whole", trajectory.token_ids, trajectory.images))
    run(hf_engine.reset_prefix_cache())

    async def replay():
        feed = VerifierFeed(verifier, "feed", chunk=5)
        grown = Trajectory("feed", "demo", [])
        for seg in trajectory.segments:
            if seg.kind == "policy":
                for i in range(0, len(seg.token_ids), 3):  # deltas of 3 tokens, chunks of 5
                    feed.tokens(seg.token_ids[i: i + 3])
            grown.segments.append(seg)
            if seg.kind != "policy":
                feed.catch_up(grown)  # the next turn starts: the observation goes over with its image
        assert feed.sent_images == 2
        return await feed.finish(grown)

    verdict = run(replay())
    assert abs(verdict.score - whole.score) < 1e-5
    assert verdict.late_tokens < 40 and verdict.early_tokens >= len(trajectory.token_ids)


def test_the_chunk_tuner_tries_each_size_keeps_the_fastest_and_tries_again():
    from vlrl.rollout.chunks import ChunkTuner

    tuner = ChunkTuner(candidates=(8, 32, 128), window=2, retry_every=3)
    step_time = {8: 5.0, 32: 3.0, 128: 4.0}
    chosen = []
    for _ in range(6 + 3 + 6):
        chosen.append(tuner.current)
        tuner.observe(step_time[tuner.current])
    assert chosen == [8, 8, 32, 32, 128, 128, 32, 32, 32, 8, 8, 32, 32, 128, 128]
    with pytest.raises(ValueError, match="positive token counts"):
        ChunkTuner(candidates=(0, 16))
