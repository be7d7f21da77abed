import hashlib
import json

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlrl.model.tiny import ADDED_TOKENS, SPECIAL_TOKENS, build_tiny_model


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_dir):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert digest(again) == digest(tiny_dir)
    assert digest(other)["model.safetensors"] != digest(tiny_dir)["model.safetensors"]
    assert digest(other)["tokenizer.json"] == digest(tiny_dir)["tokenizer.json"]


def test_unknown_arch_is_named(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown tiny model arch 'llava'"):
        build_tiny_model(tmp_path, arch="llava")


def test_loads_with_auto_classes_and_fits_the_cpu_engines(tiny_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    AutoProcessor.from_pretrained(tiny_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 10_000_000
    cfg = model.config
    text = cfg.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 64  # vLLM's CPU attention rejects smaller heads
    assert cfg.vision_config.hidden_size == text.hidden_size
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2


def test_tokenizer_has_qwens_special_tokens_as_single_ids(tokenizer):
    for tok in SPECIAL_TOKENS + ADDED_TOKENS:
        ids = tokenizer.encode(tok, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == tok
    text = "Which bar is the highest? FINAL ANSWER: 1997"
    assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level: lossless


def test_chat_template_puts_images_in_user_and_tool_messages(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which is largest?"}]},
        {"role": "assistant", "content": "<tool_call>{}</tool_call>"},
        {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "done"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    user, tool = text.split("<tool_response>")
    assert user.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert tool.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert text.endswith("<|im_start|>assistant\n")


def test_generation_config_stops_at_im_end(tiny_dir, tokenizer):
    gen = json.loads((tiny_dir / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]


def test_forward_with_processor_inputs(tiny_dir):
    from PIL import Image

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[Image.new("RGB", (112, 112), "white")], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape and torch.isfinite(logits).all()


def test_a_focus_tool_call_is_a_handful_of_tokens(tokenizer):
    """Whitespace-only pre-splitting: names and JSON keys merge, so a call costs ~10 tokens, not ~40."""
    from vlrl.builtin.tools.focus import __all__ as focus_tools

    for name in focus_tools:
        target = name[len("focus_on_"): name.index("_with_")]
        call = f'<tool_call>{{"name": "{name}", "arguments": {{"{target}_to_focus_on": ["A", "B", "C"]}}}}</tool_call>'
        ids = tokenizer.encode(call, add_special_tokens=False)
        assert len(ids) <= 14 and tokenizer.decode(ids) == call


def test_a_text_only_model_shares_the_tokenizer_and_has_no_vision(tmp_path, tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlrl.vision import VisionInputs

    a = build_tiny_model(tmp_path / "a", seed=2, arch="qwen2")
    b = build_tiny_model(tmp_path / "b", seed=2, arch="qwen2")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    config = json.loads((a / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and "vision_config" not in config
    assert AutoTokenizer.from_pretrained(a).get_vocab() == tokenizer.get_vocab()
    model = AutoModelForCausalLM.from_pretrained(a)
    ids = torch.tensor([tokenizer.encode("Is 3 the answer?")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    vision = VisionInputs(a)
    assert vision.text_only and vision.vision_token_ids == () and vision.prepare_for([1, 2], [], "here") == []
