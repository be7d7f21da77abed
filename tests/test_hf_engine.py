import asyncio

import pytest

from vlrl.demo import bar_chart, question_prompt
from vlrl.engines.hf import HFEngine
from vlrl.types import SamplingParams

QUESTIONS = ["Which bar is the highest?", "How many bars are there?", "What is the sum?", "Which is the lowest bar?"]


def test_64_concurrent_streams_match_their_solo_runs(hf_engine, run, tokenizer, vision):
    """Requests of different prompts, images and lengths join and leave the batch; no cross-talk."""
    requests = []
    for i in range(64):
        image = bar_chart([1 + (i * 7 + j * 3) % 9 for j in range(2 + i % 4)], size=(84 + 28 * (i % 3), 112))
        prompt = question_prompt(tokenizer, vision, QUESTIONS[i % 4] + " " * (i % 5), image)
        sampling = SamplingParams(max_tokens=6 + i % 17, temperature=0, suppress_token_ids=hf_engine.eos_ids)
        requests.append((prompt, [image], sampling, f"conc-{i}"))

    async def together():
        return await asyncio.gather(*[hf_engine.complete(*r) for r in requests])

    hf_engine.take_stats()
    concurrent = run(together())
    stats = hf_engine.take_stats()
    assert stats["prefill_rows"] > stats["prefill_forwards"], stats  # prompts of similar lengths shared forwards
    # the engine's account of its work: every token after a request's first is one row of a decode step
    assert stats["decode_rows"] == sum(len(c.token_ids) - 1 for c in concurrent), stats
    contexts = sum(len(r[0]) * (len(c.token_ids) - 1) for r, c in zip(requests, concurrent))
    assert stats["decode_positions"] > contexts, stats  # each row attends to its prompt at least, padded to the batch
    assert stats["cache_positions"] > 0 and stats["prefill_positions"] >= sum(len(r[0]) for r in requests) / 4
    assert stats["busy_s"] >= stats["decode_s"] + stats["prefill_s"] + stats["cache_s"] > 0, stats
    for req, got in zip(requests, concurrent):
        solo = run(hf_engine.complete(req[0], req[1], req[2], req[3] + "-solo"))
        assert got.token_ids == solo.token_ids and len(got.token_ids) == req[2].max_tokens
        assert max(abs(a - b) for a, b in zip(got.logprobs, solo.logprobs)) < 1e-4


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        HFEngine(tmp_path / "nowhere")


def test_same_seed_same_sample_other_seed_other_sample(hf_engine, run, tokenizer, vision):
    image = bar_chart([2, 5, 3])
    prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", image)
    sp = SamplingParams(max_tokens=24, temperature=1.0, seed=11, suppress_token_ids=hf_engine.eos_ids)
    a = run(hf_engine.complete(prompt, [image], sp, "seed-a"))
    b = run(hf_engine.complete(prompt, [image], sp, "seed-b"))
    c = run(hf_engine.complete(prompt, [image], SamplingParams(max_tokens=24, temperature=1.0, seed=12,
                                                               suppress_token_ids=hf_engine.eos_ids), "seed-c"))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_a_failing_forward_errors_its_requests_and_the_engine_recovers(hf_engine, run, tokenizer, vision):
    image = bar_chart([2, 5, 3])
    prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", image)
    sp = SamplingParams(max_tokens=8, temperature=0, suppress_token_ids=hf_engine.eos_ids)
    calls = {"n": 0}

    def explode_on_third_forward(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated device failure")

    handle = hf_engine.model.register_forward_hook(explode_on_third_forward)
    try:
        async def two():
            return await asyncio.gather(*[hf_engine.complete(prompt, [image], sp, f"fail-{i}") for i in range(2)],
                                        return_exceptions=True)

        outcomes = run(asyncio.wait_for(two(), timeout=60))
    finally:
        handle.remove()
    errors = [o for o in outcomes if isinstance(o, RuntimeError)]
    assert errors and all("simulated device failure" in str(e) and "fail-" in str(e) for e in errors)
    after = run(hf_engine.complete(prompt, [image], sp, "after-failure"))
    assert len(after.token_ids) == 8 and after.finish_reason == "length"


def test_a_cancelled_consumer_frees_its_request(hf_engine, run, tokenizer, vision):
    image = bar_chart([2, 5, 3])
    prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", image)
    sp = SamplingParams(max_tokens=10_000 - len(prompt) - 1, temperature=0, suppress_token_ids=hf_engine.eos_ids)

    async def cancel_midway():
        seen = asyncio.Event()

        async def consume():
            async for delta in hf_engine.generate(prompt, [image], sp, "cancel-me"):
                seen.set()

        task = asyncio.create_task(consume())
        await seen.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return await hf_engine.abort("cancel-me")

    done = run(asyncio.wait_for(cancel_midway(), timeout=60))
    assert done.finish_reason == "abort" and len(done.token_ids) >= 1
    # abort() found it retired by the cancelled stream; the engine keeps serving
    assert len(run(hf_engine.complete(prompt, [image], SamplingParams(max_tokens=4), "after-cancel")).token_ids) <= 4


def test_kv_cache_gib_bounds_the_running_batch_and_a_request_alone_still_runs(tiny_dir, run, tokenizer, vision):
    """8 requests whose prompt + max_tokens fit 3 at a time in the bound: the batch never holds more KV than it,
    every request still completes, and the engine's bytes per token are what `vlrl bench memory` reports."""
    from vlrl.bench.memory import kv_bytes_per_1k

    chart = bar_chart([3, 7, 5, 2])
    prompt = question_prompt(tokenizer, vision, QUESTIONS[0], chart)
    unbounded = HFEngine(tiny_dir)
    sampling = SamplingParams(max_tokens=24, temperature=1.0, seed=0, suppress_token_ids=unbounded.eos_ids)
    reach = len(prompt) + sampling.max_tokens
    per_token = unbounded.kv_bytes_per_token
    assert per_token * 1000 / 2**30 == pytest.approx(kv_bytes_per_1k(tiny_dir))
    bounded = HFEngine(tiny_dir, kv_cache_gib=3 * reach * per_token / 2**30)
    assert bounded.max_kv_positions == 3 * reach

    async def eight(engine):
        return await asyncio.gather(*[engine.complete(prompt, [chart], sampling, f"kv-{i}") for i in range(8)])

    try:
        for engine in (unbounded, bounded):
            outs = run(eight(engine))
            assert all(len(o.token_ids) == 24 for o in outs)
        assert bounded.take_stats()["kv_peak_positions"] <= 3 * reach < unbounded.take_stats()["kv_peak_positions"]
        lone = HFEngine(tiny_dir, kv_cache_gib=reach // 2 * per_token / 2**30)
        assert len(run(lone.complete(prompt, [chart], sampling, "kv-lone")).token_ids) == 24
        run(lone.close())
    finally:
        run(unbounded.close())
        run(bounded.close())


def test_a_batch_invariant_engine_gives_a_request_the_same_bits_whatever_runs_beside_it(tiny_dir, run, tokenizer,
                                                                                        vision):
    """Alone, or arriving with seven others of other lengths (and after them, so a prefix could be reused): the
    same tokens and bit-identical logprobs (``determinism: strict`` rests on it)."""
    engine = HFEngine(tiny_dir, batch_invariant=True)
    prompts = [question_prompt(tokenizer, vision, QUESTIONS[i % 4] + " " * i, bar_chart([1 + i, 3, 2]))
               for i in range(8)]
    sampling = SamplingParams(max_tokens=12, temperature=1.0, seed=5, suppress_token_ids=engine.eos_ids)
    image = [bar_chart([1, 3, 2])]

    async def crowd():
        return await asyncio.gather(*[engine.complete(p, [bar_chart([1 + i, 3, 2])], sampling, f"crowd-{i}")
                                      for i, p in enumerate(prompts)])

    try:
        solo = run(engine.complete(prompts[0], image, sampling, "alone"))
        crowded = run(crowd())[0]
        assert crowded.token_ids == solo.token_ids and crowded.logprobs == solo.logprobs
        assert engine.take_stats()["kv_peak_positions"] <= max(len(p) for p in prompts) + 12  # one row at a time
    finally:
        run(engine.close())
