"""Pixel bounds from the config (model.min_pixels / max_pixels, a verifier's own): every image is resized into
them, and the engines, the trainer and the verifier agree on the result."""

import math

import pytest
import torch
from PIL import Image

from vlrl.bench.parity import logprob_parity, two_turn_rollout
from vlrl.config import DistributedConfig, EngineConfig, JudgeConfig, ModelConfig, VerifierConfig
from vlrl.demo import bar_chart
from vlrl.engines import make_engine
from vlrl.eval.judges import open_model_verifier
from vlrl.trainer.logprobs import last_hidden
from vlrl.vision import VisionInputs

UNIT = 28 * 28  # the pixels of one visual token
LARGER = 36 * UNIT  # min_pixels that grows the tiny model's 112 x 112 charts (16 tokens) to 168 x 168 (36)
SMALLER = 4 * UNIT  # max_pixels that shrinks them to 56 x 56 (4 tokens)
ABOVE = 400 * UNIT  # max_pixels above the tiny folder's 448 x 448: a 560 x 560 chart keeps its 400 tokens (not 256)


def test_the_bounds_resize_every_image_and_the_processor_agrees(tiny_dir, vision):
    chart = bar_chart([3, 7, 5])  # 112 x 112
    assert vision.token_count(chart) == 16
    large = bar_chart([3, 7, 5], size=(560, 560))
    assert vision.token_count(large) == 256
    for bounds, image, tokens in (({"min_pixels": LARGER}, chart, 36), ({"max_pixels": SMALLER}, chart, 4),
                                  ({"max_pixels": ABOVE}, large, 400)):
        sized = VisionInputs(tiny_dir, **bounds)
        assert sized.token_count(image) == tokens
        batch = sized.encode([image])  # the processor's own resize: it would differ if it kept the folder's bounds
        assert batch.token_counts == (tokens,) and int(batch.grid_thw.prod()) == tokens * 4


def test_an_image_without_a_stable_size_within_the_bounds_is_refused_by_name(tiny_dir):
    """Within bounds where min equals max, Qwen's resize of a 450 x 300 image overshoots (the ceiling) and a second
    pass shrinks it again: the engine's processor would see other tokens than the ids hold. A side shrunk to
    nothing likewise. A square image has a stable size and passes."""
    tight = VisionInputs(tiny_dir, max_pixels=SMALLER)  # the folder's min_pixels is 4 tokens too
    assert tight.token_count(bar_chart([3, 7, 5])) == 4
    with pytest.raises(ValueError, match=r"an image of 450x300 pixels has no stable size within the pixel bounds "
                                          r"\[3136, 3136\]"):
        tight.prepare(Image.new("RGB", (450, 300)))
    with pytest.raises(ValueError, match=r"an image of 2000x60 pixels has no stable size .* \[3136, 12544\]"):
        VisionInputs(tiny_dir, max_pixels=16 * UNIT).prepare(Image.new("RGB", (2000, 60)))


def test_bounds_that_cannot_hold_an_image_are_named(tiny_dir):
    with pytest.raises(ValueError, match=r"pixel bounds \[3136, 100\] .* need 784 .* <= min <= max"):
        VisionInputs(tiny_dir, max_pixels=100)
    with pytest.raises(ValueError, match=r"pixel bounds \[250000, 200704\]"):  # above the folder's max
        VisionInputs(tiny_dir, min_pixels=250_000)
    with pytest.raises(ValueError, match="min_pixels 5000 is above max_pixels 4000"):
        ModelConfig(min_pixels=5000, max_pixels=4000)
    with pytest.raises(ValueError, match="must be >= 0"):
        ModelConfig(max_pixels=-1)
    with pytest.raises(ValueError, match="size a verifier model of its own, not model 'policy'"):
        VerifierConfig(model="policy", max_pixels=SMALLER)
    with pytest.raises(ValueError, match="there is none"):
        JudgeConfig(max_pixels=SMALLER)


@pytest.mark.parametrize("kind", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_both_engines_size_images_by_the_config_and_agree_with_the_trainer(tiny_dir, run, tokenizer, trainer_model,
                                                                            kind):
    """Bounds above the folder's: vLLM gets them through its processor's kwargs; with the folder's it would shrink
    each 560 x 560 chart to 256 tokens, not 400, and refuse the prompt."""
    engine = run(make_engine(ModelConfig(str(tiny_dir), max_pixels=ABOVE), EngineConfig(kind=kind)))
    sized = VisionInputs(tiny_dir, max_pixels=ABOVE)
    try:
        traj = run(two_turn_rollout(engine, tokenizer, sized, f"bounds-{kind}", tokens_per_turn=16, size=(560, 560)))
    finally:
        run(engine.close())
    assert traj.token_ids.count(sized.image_token_id) == 2 * 400
    parity = logprob_parity(trainer_model, sized, [traj])
    assert parity.tokens == 32 and parity.mean_abs < 1e-3


def test_a_verifier_with_bounds_of_its_own_reads_the_policys_images_resized(tiny_dir, run, tokenizer, vision,
                                                                             hf_engine, trainer_model):
    """The policy's trajectory holds 16-token images; a verifier at max_pixels 4 tokens' worth reads each image run
    at 4 tokens, and its P(Yes) is the trainer's forward on the ids and images so resized."""
    traj = run(two_turn_rollout(hf_engine, tokenizer, vision, "bounds-verifier", tokens_per_turn=8))
    asked = VerifierConfig(model=str(tiny_dir), max_pixels=SMALLER)
    verifier, own = run(open_model_verifier(str(tiny_dir), "verifier.model", asked, ModelConfig(str(tiny_dir)),
                                            tokenizer, EngineConfig(), DistributedConfig()))
    try:
        verdict = run(verifier.score("bounds-verifier", traj.token_ids, traj.images))
    finally:
        run(own.close())
    small = VisionInputs(tiny_dir, max_pixels=SMALLER)
    ids = small.expand(vision.collapse(traj.token_ids), traj.images)
    assert ids.count(small.image_token_id) == 2 * 4
    closing = "" if tokenizer.convert_ids_to_tokens(ids[-1]) == "<|im_end|>" else "<|im_end|>"
    ids += tokenizer.encode(f"{closing}\n<|im_start|>user\n{asked.question}<|im_end|>\n<|im_start|>assistant\n",
                            add_special_tokens=False)
    with torch.no_grad():
        hidden, _, _ = last_hidden(trainer_model, small, [(ids, traj.images)])
        probs = torch.softmax(trainer_model.lm_head(hidden[0, -1]).double(), dim=-1)
    yes, no = probs[tokenizer.encode("Yes")[0]], probs[tokenizer.encode("No")[0]]
    assert math.isclose(verdict.score, float(yes / (yes + no)), abs_tol=1e-5)
