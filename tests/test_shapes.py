"""Shape-real tiny models: a released checkpoint's vocabulary, special-token ids, context and vision patching at a
width and depth the CPU runs; the engines and the trainer agree on them at real image sizes."""

import asyncio
import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from vlrl.bench.parity import logprob_parity, two_turn_rollout
from vlrl.demo import bar_chart
from vlrl.model.tiny import SHAPES, build_tiny_model
from vlrl.vision import VisionInputs

CHART = (840, 560)  # 600 visual tokens at Qwen2.5-VL's pixel bounds (28 x 28 pixels each)


@pytest.fixture(scope="module")
def shape7b(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("shape") / "qwen2.5-vl-7b", shape="qwen2.5-vl-7b")
    return folder, AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()


def test_the_7b_shape_is_the_released_checkpoints_where_it_costs(shape7b):
    """Qwen2.5-VL-7B's config.json and preprocessor_config.json, checked field by field where they set memory
    and the ids a user's data holds."""
    folder, model = shape7b
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text, vision = model.config.text_config, model.config.vision_config
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert model.lm_head.weight.shape[0] == text.vocab_size == 151_936
    assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight  # 7B: untied
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|vision_start|>",
                                                            "<|image_pad|>", "<|video_pad|>")}
    assert ids == {"<|endoftext|>": 151_643, "<|im_end|>": 151_645, "<|vision_start|>": 151_652,
                   "<|image_pad|>": 151_655, "<|video_pad|>": 151_656}
    assert model.config.image_token_id == 151_655 and len(tokenizer) < text.vocab_size
    assert text.hidden_size // text.num_attention_heads == 128
    assert text.rope_parameters["mrope_section"] == [16, 24, 24] and text.rope_parameters["rope_theta"] == 1e6
    assert text.max_position_embeddings == 128_000
    assert (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) == (14, 2, 2)
    assert vision.window_size == 112 and vision.fullatt_block_indexes == [1, 3] and vision.depth == 4
    size = json.loads((folder / "processor_config.json").read_text())["image_processor"]["size"]
    assert (size["shortest_edge"], size["longest_edge"]) == (3_136, 12_845_056)  # Qwen's min / max pixels
    text_in = "Which bar is the highest? FINAL ANSWER: 1997"
    assert tokenizer.decode(tokenizer.encode(text_in)) == text_in
    assert VisionInputs(folder).token_count(bar_chart([1, 2], size=CHART)) == 600


def test_the_3b_shape_ties_its_embedding(tmp_path):
    folder = build_tiny_model(tmp_path / "3b", shape="qwen2.5-vl-3b")
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert model.config.text_config.vocab_size == 151_936
    size = AutoProcessor.from_pretrained(folder).image_processor.size
    assert size["longest_edge"] == SHAPES["qwen2.5-vl-3b"].max_pixels


def test_an_unknown_shape_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model shape 'qwen3-vl-8b'; known: \['qwen2.5-vl-3b'"):
        build_tiny_model(tmp_path, shape="qwen3-vl-8b")


def _parity(folder, model, kind):
    from vlrl.engines.hf import HFEngine
    from vlrl.engines.vllm import VLLMEngine

    tokenizer, vision = AutoTokenizer.from_pretrained(folder), VisionInputs(folder)
    loop = asyncio.new_event_loop()
    try:
        engine = HFEngine(folder) if kind == "hf" else loop.run_until_complete(VLLMEngine.create(folder))
        try:
            traj = loop.run_until_complete(two_turn_rollout(engine, tokenizer, vision, f"shape-{kind}",
                                                            tokens_per_turn=16, size=CHART))
        finally:
            loop.run_until_complete(engine.close())
    finally:
        loop.close()
    assert len(traj.images) == 2 and sum(vision.token_count(im) for im in traj.images) == 1_200
    return logprob_parity(model, vision, [traj])


@pytest.mark.parametrize("kind", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_engine_and_trainer_agree_on_two_600_token_images(shape7b, kind):
    """A question with a chart and a tool's edited chart, 600 visual tokens each, sampled over the 151,936-row
    vocabulary: the trainer's logprobs equal the engine's (float32)."""
    parity = _parity(*shape7b, kind)
    assert parity.tokens == 32 and parity.mean_abs < 1e-3 and parity.max_abs < 1e-2, parity
