"""The other architecture family: a tiny Qwen2.5-VL (windowed vision attention, its own rope index)."""

import asyncio

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from vlrl.bench.parity import logprob_parity, two_turn_rollout
from vlrl.demo import bar_chart
from vlrl.model.tiny import build_tiny_model
from vlrl.trainer.logprobs import sequence_logprobs
from vlrl.types import SamplingParams
from vlrl.vision import VisionInputs


@pytest.fixture(scope="module")
def q25(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("q25") / "tiny-qwen2.5-vl", arch="qwen2.5-vl")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    return folder, model, AutoTokenizer.from_pretrained(folder), VisionInputs(folder)


def test_trainer_logprobs_match_transformers_own_positions(q25):
    folder, model, _, vision = q25
    processor = AutoProcessor.from_pretrained(folder)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which is largest?"}]},
            {"role": "assistant", "content": "Zoom."},
            {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "ok"}]}]
    images = [bar_chart([1, 4, 2], size=(224, 112)), bar_chart([1, 4, 2], size=(112, 168))]
    enc = processor(text=[processor.apply_chat_template(msgs, tokenize=False)], images=images, return_tensors="pt")
    with torch.no_grad():
        model.model.rope_deltas = None
        ids = enc["input_ids"][0]
        ref = torch.log_softmax(model(**enc).logits[0, :-1].float(), -1).gather(-1, ids[1:, None]).squeeze(-1)
        ours = sequence_logprobs(model, vision, [(ids.tolist(), images)])[0].logprobs
    assert torch.allclose(ours, ref, atol=1e-5)


def _check_parity(engine, model, tokenizer, vision, loop):
    traj = loop.run_until_complete(two_turn_rollout(engine, tokenizer, vision, "q25-parity"))
    parity = logprob_parity(model, vision, [traj])
    assert parity.mean_abs < 1e-3 and parity.max_abs < 1e-2, parity
    return traj


def _with_engine(folder, kind, body):
    from vlrl.engines.hf import HFEngine
    from vlrl.engines.vllm import VLLMEngine

    loop = asyncio.new_event_loop()
    try:
        engine = HFEngine(folder) if kind == "hf" else loop.run_until_complete(VLLMEngine.create(folder))
        try:
            return body(engine, loop)
        finally:
            loop.run_until_complete(engine.close())
    finally:
        loop.close()


def test_hf_engine_parity(q25):
    folder, model, tokenizer, vision = q25
    _with_engine(folder, "hf", lambda e, loop: _check_parity(e, model, tokenizer, vision, loop))


@pytest.mark.vllm
def test_vllm_engine_parity_and_greedy_agreement_with_hf(q25):
    folder, model, tokenizer, vision = q25
    sp = SamplingParams(max_tokens=32, temperature=0)

    def hf_body(engine, loop):
        traj = _check_parity(engine, model, tokenizer, vision, loop)
        prefix = traj.token_ids[:-10]  # ends inside a policy turn, after two images
        return prefix, traj.images, loop.run_until_complete(engine.complete(prefix, traj.images, sp, "greedy"))

    prefix, images, hf_greedy = _with_engine(folder, "hf", hf_body)

    def vllm_body(engine, loop):
        _check_parity(engine, model, tokenizer, vision, loop)
        return loop.run_until_complete(engine.complete(prefix, images, sp, "greedy"))

    assert _with_engine(folder, "vllm", vllm_body).token_ids == hf_greedy.token_ids
