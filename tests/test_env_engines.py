"""Invariant 2 end to end: an env episode's ids and images run on both engines and in the trainer forward."""

from __future__ import annotations

import pytest

from vlrl.bench.parity import logprob_parity
from vlrl.builtin.envs.agents import ScriptedAgent
from vlrl.builtin.envs.visual_tool import VisualToolEnv
from vlrl.builtin.tasks.charts import synthetic_charts
from vlrl.config import EnvConfig, SandboxConfig
from vlrl.rollout.play import text_turn
from vlrl.types import SamplingParams

ENGINES = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.mark.parametrize("formats", [["json"], ["code"]])
def test_scripted_tool_call_then_engine_turn_matches_the_trainer(engine, run, tokenizer, vision, trainer_model,
                                                                 formats):
    sample = next(synthetic_charts(seed=11, kinds=["v_bar"], families=["retrieval"]))
    env = VisualToolEnv(EnvConfig(action_formats=formats, sandbox=SandboxConfig(workers=1)), tokenizer, vision)
    run(env.__aenter__())
    try:
        episode = env.reset(sample, f"e2e-{formats[0]}")
        step = run(episode.step(text_turn(tokenizer, ScriptedAgent().act(episode))))
        assert not step.done and len(episode.trajectory.images) == 2
        traj = episode.trajectory
        # the engine continues after the tool result: the edited image sits mid-trajectory
        sampling = SamplingParams(max_tokens=48, temperature=1.0, seed=3, suppress_token_ids=engine.eos_ids)
        turn = run(engine.complete(traj.token_ids, traj.images, sampling, f"e2e-{formats[0]}"))
        assert len(turn.token_ids) == 48 and set(turn.versions) == {engine.version}
        final = run(episode.step(turn))
        assert final.done and final.reason == "length"
    finally:
        run(env.__aexit__(None, None, None))
    assert len(vision.pad_runs(traj.token_ids)) == 2 == len(traj.images)
    assert traj.turns == 2 and traj.loss_mask.count(1) == sum(len(s.token_ids) for s in traj.segments
                                                            if s.kind == "policy")
    parity = logprob_parity(trainer_model, vision, [traj])
    assert parity.tokens == 48 and parity.mean_abs < 1e-3 and parity.max_abs < 1e-2, parity
