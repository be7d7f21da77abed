"""The rollout manager and the policy trainer with the tiny model, the real env and the HF engine."""

from __future__ import annotations

import copy
from itertools import islice

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vlrl.algos.grpo import group_advantages
from vlrl.algos.losses import ClippedSurrogate
from vlrl.builtin.envs.visual_tool import VisualToolEnv
from vlrl.builtin.tasks.charts import synthetic_charts
from vlrl.builtin.tasks.rewards import chartqa_relaxed
from vlrl.config import EnvConfig, LossConfig, OptimConfig, SandboxConfig
from vlrl.engines.hf import HFEngine
from vlrl.recipes.train import sync_weights
from vlrl.rollout.manager import RolloutManager
from vlrl.trainer.batches import TrainItem, micro_batches
from vlrl.trainer.policy import PolicyTrainer
from vlrl.types import SamplingParams, Score, Segment, Trajectory


@pytest.fixture
def engine(tiny_dir, run):
    engine = HFEngine(tiny_dir)  # its own: these tests change its weights
    yield engine
    run(engine.close())


def fresh_model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)


def rollout(run, engine, tokenizer, vision, env_config, reward, samples, group_size=2, seed=0, max_tokens=24,
            **sampling):
    async def go():
        async with VisualToolEnv(env_config, tokenizer, vision) as env:
            manager = RolloutManager(engine, env, tokenizer, reward,
                                     SamplingParams(max_tokens=max_tokens, **sampling), group_size)
            return await manager.rollout(samples, seed)

    return run(go())


NO_TOOLS = EnvConfig(tools=[], max_turns=1, sandbox=SandboxConfig(workers=1))


def test_a_manager_without_a_timeline_keeps_no_spans(run, engine, tokenizer, vision):
    samples = list(islice(synthetic_charts(seed=2), 2))

    async def timeline_of(record: bool):
        async with VisualToolEnv(NO_TOOLS, tokenizer, vision) as env:
            manager = RolloutManager(engine, env, tokenizer, chartqa_relaxed, SamplingParams(max_tokens=24), 2,
                                     timeline=record)
            await manager.rollout(samples, 0)
            return manager.timeline

    kept, dropped = run(timeline_of(True)), run(timeline_of(False))
    assert len({span.track for span in kept.spans if span.phase == "decode"}) == 4  # every trajectory, recorded
    assert dropped.spans == [] and dropped.marks == []


def test_rollout_groups_record_rewards_masks_logprobs_and_times(run, engine, tokenizer, vision):
    samples = list(islice(synthetic_charts(seed=2), 3))
    result = rollout(run, engine, tokenizer, vision, EnvConfig(max_turns=2, sandbox=SandboxConfig(workers=2)),
                     chartqa_relaxed, samples, group_size=2)
    assert [g.sample.id for g in result.groups] == [s.id for s in samples] and not result.dropped
    for group in result.groups:
        assert len(group.trajectories) == 2
        for t in group.trajectories:
            assert t.reward is not None and set(t.reward_parts) == {"accuracy", "format"}
            assert t.finish_reason in ("answer", "length", "max_turns", "max_tool_calls", "context")
            policy = [i for i, m in enumerate(t.loss_mask) if m]
            assert policy and all(t.versions[i] == 0 for i in policy)
            assert all(t.behavior_logprobs[i] <= 0 for i in policy)
            assert t.timings.decode_s > 0 and t.timings.wall_s >= t.timings.decode_s + t.timings.env_s
    assert result.seconds.wall >= result.seconds.generate + result.seconds.reward - 1e-9 > 0
    # the same seed samples the same tokens
    again = rollout(run, engine, tokenizer, vision, EnvConfig(max_turns=2, sandbox=SandboxConfig(workers=2)),
                    chartqa_relaxed, samples, group_size=2)
    assert [t.token_ids for t in again.trajectories] == [t.token_ids for t in result.trajectories]


def test_a_reward_that_raises_is_counted_and_its_group_dropped(run, engine, tokenizer, vision):
    samples = list(islice(synthetic_charts(seed=3), 2))

    def flaky(text, answers):
        if answers == samples[0].answers:
            raise RuntimeError("verifier down")
        return Score(1.0, {"accuracy": 1.0})

    result = rollout(run, engine, tokenizer, vision, NO_TOOLS, flaky, samples)
    assert [g.sample.id for g in result.groups] == [samples[1].id]
    assert dict(result.dropped) == {"error: RuntimeError": 2}  # both members of the first group, by reason
    assert "verifier down" in result.errors[0] and samples[0].id in result.errors[0]


def test_first_step_is_on_policy_then_weights_move_and_reach_the_engine(run, engine, tokenizer, vision, tiny_dir):
    samples = list(islice(synthetic_charts(seed=4), 2))
    result = rollout(run, engine, tokenizer, vision, NO_TOOLS, chartqa_relaxed, samples, group_size=2)
    model = fresh_model(tiny_dir)
    before = copy.deepcopy(model.state_dict())
    trainer = PolicyTrainer(model, vision, OptimConfig(lr=1e-3), ClippedSurrogate(LossConfig(importance_cap=2.0)),
                            total_steps=2)
    items = [TrainItem(t, a) for t, a in zip(result.trajectories, [1.0, -1.0, 0.5, -0.5])]
    metrics = trainer.step(items)
    assert metrics["parity"] < 1e-3  # the trainer agrees with the engine that sampled
    assert metrics["ratio"] == pytest.approx(1.0, abs=1e-6) and metrics["clip_fraction"] == 0
    assert abs(metrics["importance_weight"] - 1) < 1e-3 and metrics["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    run(sync_weights(trainer, engine))
    assert engine.version == 1
    after = rollout(run, engine, tokenizer, vision, NO_TOOLS, chartqa_relaxed, samples[:1], group_size=2, seed=7)
    assert all(v == 1 for t in after.trajectories for v, m in zip(t.versions, t.loss_mask) if m)
    # the engine now samples with the trainer's new weights: parity holds again
    check = PolicyTrainer(model, vision, OptimConfig(lr=1e-9), ClippedSurrogate(LossConfig()), total_steps=1)
    assert check.step([TrainItem(t, 0.0) for t in after.trajectories])["parity"] < 1e-3


def test_micro_batches_group_similar_lengths_so_a_long_tail_pads_little():
    lengths = [900, 10, 10, 11, 880, 10]
    trajectories = [Trajectory(f"t{k}", "s", [Segment("prompt", (1,) * n)]) for k, n in enumerate(lengths)]
    batches = micro_batches(trajectories, 2000)
    assert [[len(t.token_ids) for t in b] for b in batches] == [[10, 10, 10, 11], [880, 900]]
    # cut in batch order, two 10s would be padded to 900 and 880: [900, 10], [10, 11], [880, 10], 3,582 tokens
    assert sum(max(len(t.token_ids) for t in b) * len(b) for b in batches) == 4 * 11 + 2 * 900


def test_micro_batches_leave_at_most_a_tenth_of_a_forward_to_padding():
    lengths = [420, 100, 400, 100, 100]
    trajectories = [Trajectory(f"t{k}", "s", [Segment("prompt", (1,) * n)]) for k, n in enumerate(lengths)]
    # the budget holds all five (2,100 padded positions), but 980 of them would be padding: 400 starts a new one
    batches = micro_batches(trajectories, 10_000)
    assert [[len(t.token_ids) for t in b] for b in batches] == [[100, 100, 100], [400, 420]]
    with pytest.raises(ValueError, match="need budget >= 1 and 0 <= max_padding < 1, got 0 and"):
        micro_batches(trajectories, 0)


def test_micro_batches_give_the_same_gradient_as_one_batch(run, engine, tokenizer, vision, tiny_dir):
    samples = list(islice(synthetic_charts(seed=5), 2))
    result = rollout(run, engine, tokenizer, vision, NO_TOOLS, chartqa_relaxed, samples, group_size=2)
    items = [TrainItem(t, a) for t, a in zip(result.trajectories, [1.0, -1.0, 0.3, -0.3])]
    assert len(micro_batches(items, 1)) == 4
    grads, losses = [], []
    for budget, aggregation in ((100_000, "token-mean"), (1, "token-mean"), (100_000, "seq-mean-token-sum"),
                                (1, "seq-mean-token-sum")):
        model = fresh_model(tiny_dir)
        trainer = PolicyTrainer(model, vision, OptimConfig(lr=1e-3, micro_batch_tokens=budget),
                                ClippedSurrogate(LossConfig(aggregation=aggregation)), total_steps=1)
        losses.append(trainer.backward(items)["loss"])
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    for a, b in ((0, 1), (2, 3)):
        assert losses[a] == pytest.approx(losses[b], abs=1e-6)
        assert torch.allclose(grads[a], grads[b], atol=1e-6, rtol=1e-4)
    assert not torch.allclose(grads[0], grads[2], atol=1e-6)  # the aggregations really differ


def four_image_items(tokenizer, vision):
    from vlrl.bench.memory import trajectory

    return [TrainItem(trajectory(tokenizer, vision, 1200, seed=s), a) for s, a in ((0, 1.0), (1, -0.5))]


def test_gradient_checkpointing_recomputes_the_layers_for_the_same_gradient(tokenizer, vision, tiny_dir):
    """optim.gradient_checkpointing: every decoder layer runs twice per micro-batch (forward, then again in the
    backward) and the gradient is the one without it."""
    items = four_image_items(tokenizer, vision)
    grads, calls = [], []
    for checkpointing in (False, True):
        model = fresh_model(tiny_dir)
        ran = []
        model.model.language_model.layers[0].register_forward_pre_hook(lambda *_: ran.append(1))
        trainer = PolicyTrainer(model, vision, OptimConfig(micro_batch_tokens=100_000,
                                                           gradient_checkpointing=checkpointing),
                                ClippedSurrogate(LossConfig()), total_steps=1)
        trainer.backward(items)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        calls.append(len(ran))
    assert calls == [1, 2]
    assert (grads[1] - grads[0]).abs().max() <= 1e-5 * grads[0].abs().max()


def test_bfloat16_autocast_keeps_float32_weights_and_state_near_the_float32_step(tokenizer, vision, tiny_dir):
    """optim.autocast=bfloat16: the forwards in bf16, the weights, gradients and AdamW's moments float32; the
    logprobs within 0.02 nats of float32's on average (0.005 measured, 0.025 at most) and the gradient pointing the
    same way."""
    items = four_image_items(tokenizer, vision)
    results = []
    for autocast in ("none", "bfloat16"):
        model = fresh_model(tiny_dir)
        trainer = PolicyTrainer(model, vision, OptimConfig(lr=1e-4, autocast=autocast),
                                ClippedSurrogate(LossConfig()), total_steps=1)
        logprobs = torch.cat(trainer.logprobs(items))
        trainer.backward(items)
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        trainer.optimizer.step()
        moments = [s["exp_avg"].dtype for s in trainer.optimizer.state.values()]
        results.append((logprobs, grad, {p.dtype for p in model.parameters()}, set(moments)))
    (logp32, grad32, _, _), (logp16, grad16, weights, moments) = results
    assert weights == moments == {torch.float32} and logp16.dtype == torch.float32
    gap = (logp16 - logp32).abs()
    assert 0 < gap.mean() < 0.02, gap.mean()  # not float32 (bf16 did run), and close
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99


def test_grpo_steps_raise_the_reward_on_a_task_the_model_gets_partly_right(run, engine, tokenizer, vision,
                                                                           tiny_dir):
    """One token, top-2 sampling: the reward is whether it is the token the model now ranks second."""
    samples = list(islice(synthetic_charts(seed=6, kinds=["v_bar"]), 4))
    probe = rollout(run, engine, tokenizer, vision, NO_TOOLS, lambda t, a: Score(0.0), samples, group_size=1,
                    max_tokens=1, temperature=0)
    model = fresh_model(tiny_dir)
    greedy = tokenizer.decode(probe.trajectories[0].token_ids[-1:])

    def reward(text, answers):
        return Score(float(text != greedy), {"accuracy": float(text != greedy)})

    trainer = PolicyTrainer(model, vision, OptimConfig(lr=3e-3), ClippedSurrogate(LossConfig()), total_steps=6)
    means = []
    for step in range(6):
        result = rollout(run, engine, tokenizer, vision, NO_TOOLS, reward, samples, group_size=8, seed=step,
                         max_tokens=1, top_k=2)
        rewards = torch.tensor([[t.reward for t in g.trajectories] for g in result.groups])
        means.append(float(rewards.mean()))
        advantages = group_advantages(rewards)
        trainer.step([TrainItem(t, float(a)) for g, row in zip(result.groups, advantages)
                      for t, a in zip(g.trajectories, row)])
        run(sync_weights(trainer, engine))
    assert 0.1 < means[0] < 0.9, means  # partly right at the start
    assert means[-1] > means[0] + 0.2, means


@pytest.mark.slow
def test_a_thousand_trajectories_in_flight_complete_with_the_kv_cache_bounded(run, tiny_dir, tokenizer, vision):
    """250 questions x 4 started at once on the HF engine with engine.kv_cache_gib at 64 MB: every trajectory ends
    and is kept, the running batch never holds more keys and values than the bound, and the process grows by less
    than 2 GB (what it grew by is printed)."""
    import psutil

    samples = list(islice(synthetic_charts(seed=11, kinds=["v_bar"]), 250))
    engine = HFEngine(tiny_dir, max_num_seqs=256, kv_cache_gib=1 / 16)
    before = psutil.Process().memory_info().rss
    try:
        result = rollout(run, engine, tokenizer, vision, NO_TOOLS, chartqa_relaxed, samples, group_size=4,
                         max_tokens=8)
        stats = engine.take_stats()
    finally:
        run(engine.close())
    grown = (psutil.Process().memory_info().rss - before) / 2**30
    assert len(result.groups) == 250 and len(result.trajectories) == 1000 and not result.dropped
    assert 0 < stats["kv_peak_positions"] <= engine.max_kv_positions
    print(f"1,000 trajectories: KV peak {stats['kv_peak_positions'] * engine.kv_bytes_per_token / 2**20:.1f} MiB "
          f"(bound {engine.max_kv_positions * engine.kv_bytes_per_token / 2**20:.1f}), resident +{grown:.2f} GB, "
          f"{result.seconds.wall:.1f} s")
    assert grown < 2.0
