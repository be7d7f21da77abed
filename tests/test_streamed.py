"""The KL reference's logprobs and PPO's critic values, streamed while trajectories decode, equal the one-shot ones."""

from __future__ import annotations

import dataclasses
import json
from itertools import islice

import pytest
import torch

from test_cli import vlrl
from test_verifier import pieces
from vlrl.algos.critic import Critic
from vlrl.bench.parity import two_turn_rollout
from vlrl.builtin.envs.visual_tool import VisualToolEnv
from vlrl.builtin.tasks.charts import synthetic_charts
from vlrl.builtin.tasks.rewards import chartqa_relaxed
from vlrl.config import CriticConfig, EnvConfig, SandboxConfig
from vlrl.rollout.feed import OnThread
from vlrl.rollout.manager import RolloutManager
from vlrl.trainer.logprobs import sequence_logprobs
from vlrl.trainer.streamed import LOGPROBS, Reading, StreamedScores
from vlrl.types import SamplingParams, Segment
from vlrl.worker_thread import WorkerThread


@pytest.fixture
def critic(tiny_dir, vision):
    critic = Critic(tiny_dir, vision, CriticConfig(), torch.float32)
    torch.nn.init.normal_(critic.head.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    return critic


def one_shot_logprobs(model, vision, traj):
    return sequence_logprobs(model, vision, [(traj.token_ids, traj.images)])[0].logprobs


def feed(scores, traj, chunk, upto=None):
    """Hand ``traj`` over as the rollout manager does (inputs whole, policy turns in chunks), ``upto`` pieces."""
    ids, images = [], []
    for piece_ids, piece_images in islice(pieces(traj, chunk), upto):
        ids += piece_ids
        images += piece_images
        scores.advance(traj.id, ids, images)


def test_pieces_of_any_size_score_as_the_whole_trajectory(hf_engine, run, tokenizer, vision, trainer_model, critic):
    traj = run(two_turn_rollout(hf_engine, tokenizer, vision, "streamed-traj", seed=3))
    assert len(traj.images) == 2  # the question's image and a tool's, one of them inside the stream
    whole_logprobs = one_shot_logprobs(trainer_model, vision, traj)
    whole_values = critic.values([traj])[0]
    critic.streamed.take_stats()
    reference = StreamedScores("reference", trainer_model, vision, LOGPROBS, lambda: 0)
    for chunk in (1, 7, 64):
        for scores in (reference, critic.streamed):
            feed(scores, traj, chunk)
            scores.seal(traj)
        logprobs, values = reference.take(traj), critic.values([traj])[0]
        assert logprobs.shape == whole_logprobs.shape and values.shape == whole_values.shape
        assert torch.allclose(logprobs, whole_logprobs, atol=1e-4), chunk
        assert torch.allclose(values, whole_values, atol=1e-4), chunk
        for scores in (reference, critic.streamed):
            stats = scores.take_stats()  # every token computed while streaming, none after
            assert stats[f"{scores.name}_streamed_tokens"] == len(traj.token_ids)
            assert stats[f"{scores.name}_late_tokens"] == 0
    # fed ids the trajectory does not hold (an env that rewrote a turn): not read, computed whole instead
    feed(reference, dataclasses.replace(traj, segments=[traj.segments[0], Segment("policy", (9, 9, 9), (), (0.0,) * 3,
                                                                                  (0,) * 3)]), 7)
    assert reference.take(traj) is None
    reference.take_stats()
    # fed only part of the way (never sealed): ``take`` computes the rest, and counts it as late
    feed(reference, traj, 7, upto=3)
    assert torch.allclose(reference.take(traj), whole_logprobs, atol=1e-4)
    stats = reference.take_stats()
    assert 0 < stats["reference_late_tokens"] < len(traj.token_ids)
    assert stats["reference_streamed_tokens"] + stats["reference_late_tokens"] == len(traj.token_ids)


def test_a_critic_that_steps_mid_trajectory_starts_it_over_under_its_new_weights(hf_engine, run, tokenizer, vision,
                                                                                 critic):
    traj = run(two_turn_rollout(hf_engine, tokenizer, vision, "stale-traj", seed=5))
    before = critic.values([traj])[0]
    critic.streamed.take_stats()

    def step():  # what an update does to the values, which the pieces already computed do not know
        with torch.no_grad():
            critic.head.bias.add_(1.0)
        critic.version += 1

    feed(critic.streamed, traj, 8, upto=3)
    step()
    feed(critic.streamed, traj, 8)  # the next piece finds newer weights: everything is computed again
    critic.streamed.seal(traj)
    assert torch.allclose(critic.values([traj])[0], before + 1.0, atol=1e-4)
    stats = critic.streamed.take_stats()
    assert stats["critic_streamed_tokens"] > len(traj.token_ids) and stats["critic_late_tokens"] == 0
    # sealed under the old weights, then stepped: the values are computed again, not read stale
    feed(critic.streamed, traj, 8)
    critic.streamed.seal(traj)
    step()
    assert torch.allclose(critic.values([traj])[0], before + 2.0, atol=1e-4)
    assert critic.streamed.take_stats()["critic_late_tokens"] == len(traj.token_ids) - 1


def rollout_with(run, engine, tokenizer, vision, sinks, samples):
    async def go():
        async with VisualToolEnv(EnvConfig(tools=[], max_turns=1, sandbox=SandboxConfig(workers=1)), tokenizer,
                                 vision) as env:
            manager = RolloutManager(engine, env, tokenizer, chartqa_relaxed, SamplingParams(max_tokens=24), 2,
                                     streams=sinks, stream_chunk=4)
            return await manager.rollout(samples, seed=0)

    return run(go())


def test_a_rollout_streams_to_the_trainers_models_and_they_need_nothing_after_it(hf_engine, run, tokenizer, vision,
                                                                                  trainer_model, critic):
    worker = WorkerThread("test-trainer")
    reference = StreamedScores("reference", trainer_model, vision, LOGPROBS, lambda: 0)
    samples = list(islice(synthetic_charts(seed=2), 2))
    sinks = [OnThread(reference, worker), OnThread(critic.streamed, worker)]
    result = rollout_with(run, hf_engine, tokenizer, vision, sinks, samples)
    trajs = result.trajectories
    assert len(trajs) == 4 and not result.dropped

    def read():  # on the trainer's thread, after the rollout, as the algorithm does
        return [reference.take(t) for t in trajs], critic.values(trajs)

    logprobs, values = run(worker.run(read))
    worker.close()
    assert not any(sink._fed or sink.scores._progress for sink in sinks)  # nothing is left behind
    whole = critic.values(trajs)
    for traj, lp, v, w in zip(trajs, logprobs, values, whole):
        assert torch.allclose(lp, one_shot_logprobs(trainer_model, vision, traj), atol=1e-4)
        assert torch.allclose(v, w, atol=1e-4)
    tokens = sum(len(t.token_ids) for t in trajs)
    assert reference.take_stats() == {"reference_streamed_tokens": tokens, "reference_late_tokens": 0}


def test_a_stream_that_fails_costs_the_trajectory_nothing(hf_engine, run, tokenizer, vision, trainer_model):
    def broken(out):
        raise RuntimeError("out of memory on the trainer's device")

    worker = WorkerThread("test-trainer")
    scores = StreamedScores("reference", trainer_model, vision, Reading(broken, LOGPROBS.pick), lambda: 0)
    sink = OnThread(scores, worker)
    samples = list(islice(synthetic_charts(seed=3), 1))
    result = rollout_with(run, hf_engine, tokenizer, vision, [sink], samples)
    assert len(result.trajectories) == 2 and not result.dropped  # the rollout kept every trajectory
    assert sink.errors and "out of memory" in sink.errors[0] and "reference" in sink.errors[0]
    assert all(run(worker.run(scores.take, t)) is None for t in result.trajectories)  # computed whole instead
    worker.close()


def last_record(folder):
    return json.loads((folder / "latest" / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_ppo_with_kl_trains_the_same_streamed_or_not(train_config, tmp_path):
    common = ["train", str(train_config), "algo.name=ppo", "algo.loss.kl_coef=0.1", "steps=2", "checkpoint_every=0"]
    vlrl(*common, f"log.dir={tmp_path / 'whole'}")
    vlrl(*common, f"log.dir={tmp_path / 'streamed'}", "algo.stream_chunk_tokens=3")
    whole, streamed = last_record(tmp_path / "whole"), last_record(tmp_path / "streamed")
    assert whole["loss/kl"] > 0 and whole["loss/grad_norm"] > 0  # the second step trains and has moved from pi_ref
    for key in ("loss/policy", "loss/value_loss", "loss/kl", "loss/grad_norm", "reward/mean"):
        assert streamed[key] == pytest.approx(whole[key], rel=1e-3), key
    for model in ("reference", "critic"):
        assert streamed[f"algo/{model}_streamed_tokens"] > 0 and streamed[f"algo/{model}_late_tokens"] == 0
        assert f"algo/{model}_streamed_tokens" not in whole
