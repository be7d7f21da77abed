"""The model-based verifier on both engines: streamed in chunks it scores exactly as at once."""

from __future__ import annotations

import math

import pytest
import torch

from vlrl.engines.parity import two_turn_rollout
from vlrl.rewards.verifier import Verifier
from vlrl.trainer.logprobs import forward

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


def test_hf_finish_computes_only_the_question(hf_engine, run, tokenizer, trajectory):
    verifier = Verifier(hf_engine, tokenizer)
    run(hf_engine.reset_prefix_cache())
    whole = run(verifier.score("hf-whole", trajectory.token_ids, trajectory.images))
    run(hf_engine.reset_prefix_cache())
    verdict = run(streamed(verifier, trajectory, 16, "hf-chunks"))
    question = len(whole_ids(verifier, trajectory)) - len(trajectory.token_ids)
    assert verdict.late_tokens == question
    assert whole.late_tokens == len(trajectory.token_ids) + question


def whole_ids(verifier, traj):
    ids = list(traj.token_ids)
    return ids + (verifier.turn_ids if ids[-1] == verifier.end_of_turn else verifier.closed_turn_ids)


def test_score_is_p_yes_over_yes_and_no_from_the_trainer_forward(hf_engine, run, tokenizer, vision, trajectory,
                                                                trainer_model):
    verifier = Verifier(hf_engine, tokenizer, yes=("Yes", " Yes"), no=("No",))
    verdict = run(verifier.score("vs-trainer", trajectory.token_ids, trajectory.images))
    with torch.no_grad():
        out, _, _ = forward(trainer_model, vision, [(whole_ids(verifier, trajectory), trajectory.images)])
    probs = torch.softmax(out.logits[0, -1].double(), dim=-1)
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
        verifier._normalize("t", [-math.inf, -math.inf])
