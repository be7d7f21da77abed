"""Build a tiny, randomly initialised Qwen2-VL (or Qwen2.5-VL) model folder without any download.

The folder holds everything a real checkpoint holds (config, safetensors weights,
tokenizer, image processor, chat template, generation config), so the HF engine, the
vLLM engine and the trainer load it exactly as they load Qwen2-VL-2B. The tokenizer is
a byte-level BPE trained here on chart / table QA and tool-call text, split at
whitespace only (a focus-tool call is a handful of tokens, not forty); the model is
sized for CPU: head_dim 64 (vLLM's CPU attention rejects smaller), vision output size
equal to the text hidden size, ``mrope_section`` summing to head_dim / 2.

A shape (``SHAPES``: Qwen2.5-VL-3B, -7B) keeps what makes a released checkpoint costly
at the sizes users train (the 151,936-row vocabulary, head_dim 128, the context length,
the processor's pixel bounds up to thousands of visual tokens per image) at a width and
depth this CPU runs, so tests and benchmarks meet those shapes.

``arch="qwen2"`` writes a text-only Qwen2 language model of the same text sizes, with the
same tokenizer and chat template and no vision: what a text-only judge (VTool-R1 grades
with Qwen2.5-7B-Instruct) is in tests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

# Qwen's special tokens, in Qwen's order. The tool-call markers are added but, as in
# Qwen2.5, not "special": they survive decoding with skip_special_tokens.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

VOCAB_SIZE = 2048
MAX_POSITIONS = 16384  # room for a system prompt that lists every tool schema, and several images
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 448 * 448

WORDS = (
    "chart table bar line pie column row value values label labels axis title legend "
    "which what how many is the of in and or than more less largest smallest highest "
    "lowest total sum average mean difference between compare greater year years "
    "percent percentage share country countries number count rank first second third "
    "last answer question image look focus mask draw highlight crop zoom box region "
    "the a an to for on with by from at as are was were be has have it this that these "
    "THOUGHT ACTION OBSERVATION FINAL ANSWER Yes No None True False Execution success "
    "display image_1 image_2 columns_bbox rows_bbox x_values_bbox y_values_bbox "
    "focus_on_columns_with_mask focus_on_rows_with_mask focus_on_x_values_with_draw "
    "focus_on_y_values_with_highlight zoom_in draw_box draw_line highlight_region "
    "name arguments def return import python json error"
    # the words of tool schemas and of the environment's prompts
    " type function description parameters properties items string array number integer boolean "
    "required default enum minItems maxItems relative factor color width red green blue black "
    "edit tool tools call calls result returns turn turns stop wait write when you know "
    "hide everything but given other one painted white header stays categories named by their "
    "x-axis y-axis label each exactly as written outline tint translucent region cut out keep "
    "enlarge read small text compare close rectangle mark pixels fractions height reference "
    "Printed error: unknown tool argument missing not valid JSON code block does compile "
    "displayed no last now Defined OBSERVATION: Execution success. The result is"
    # capitalised, as questions and prompts start
    " Which What How Is Answer About Tools Call End Hide Draw Tint Returns Args"
).split()
LABELS = [*"ABCDEFGHIJ", "Apples", "Peru", "Total", "Men", "2019"]  # labels a focus call names
FOCUS_CALLS = [(t, op) for t in ("columns", "rows", "x_values", "y_values") for op in ("mask", "draw", "highlight")]


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    """Deterministic training text covering the vocabulary of the tasks and tools."""
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        number = rng.choice([str(rng.randint(0, 100)), f"{rng.uniform(0, 1000):.1f}"])
        out.append(" ".join(words) + f" {number}")
        out.append(f"FINAL ANSWER: {rng.choice([*LABELS, number])}")  # as an answer line starts
        out.append(
            f'<tool_call>{{"name": "{rng.choice(WORDS)}", "arguments": '
            f'{{"labels": ["{rng.choice(WORDS)}", "{rng.randint(1990, 2030)}"]}}}}</tool_call>'
        )
        target, op = rng.choice(FOCUS_CALLS)
        labels = ", ".join(f'"{rng.choice(LABELS)}"' for _ in range(rng.randint(1, 4)))
        out.append(f'<tool_call>{{"name": "focus_on_{target}_with_{op}", "arguments": {{"{target}_to_focus_on": '
                   f'[{labels}]}}}}</tool_call>')
        out.append(f"```python\nimage_{rng.randint(1, 3)} = {rng.choice(WORDS)}(image_1)\ndisplay(image_1)\n```")
    return out


def build_tokenizer(specials_at: int = 0, max_positions: int = MAX_POSITIONS) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with Qwen's special tokens and wrap it for transformers.

    The corpus has a fixed seed: every tiny model shares one vocabulary, whatever the
    seed of its weights. ``specials_at``: the id of the first special token, the ids between
    the trained vocabulary and it held by reserved special tokens (as Qwen2.5's are at
    151,643 and after); 0 puts them right after the trained vocabulary.
    """
    tok = Tokenizer(models.BPE())
    # split at whitespace only, so a tool name or a JSON key with its quotes can be one token
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\S+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS) - len(ADDED_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(random.Random(0)), trainer=trainer)
    if specials_at:
        tok = _reserved_up_to(tok, specials_at)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens(ADDED_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
    )


def _reserved_up_to(tok: Tokenizer, end: int) -> Tokenizer:
    """``tok`` with entries ``<|reserved_i|>`` in its vocabulary up to id ``end``: ids no text encodes to (no merge
    makes them) that decode to their names. In the model's vocabulary rather than added tokens, which
    transformers would take seconds to load at 150k of them."""
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    trained = len(vocab)
    if end < trained:
        raise ValueError(f"special tokens must start at or after the trained vocabulary ({trained}), got {end}")
    vocab.update({f"<|reserved_{i}|>": trained + i for i in range(end - trained)})
    return Tokenizer.from_str(json.dumps(spec))


# The vision towers of the two architectures; both emit vectors of the text hidden size.
VISION = {
    "qwen2-vl": dict(depth=2, embed_dim=128, hidden_size=256, num_heads=2, mlp_ratio=2),
    # Qwen2.5-VL: windowed attention in every block but the last, SwiGLU MLP
    "qwen2.5-vl": dict(depth=2, hidden_size=128, out_hidden_size=256, intermediate_size=256, num_heads=2,
                       window_size=112, fullatt_block_indexes=[1], tokens_per_second=2),
}
TEXT = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=MAX_POSITIONS,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
            tie_word_embeddings=True)
ARCHS = {
    "qwen2-vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor),
    "qwen2.5-vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor),
}
TEXT_ONLY = "qwen2"  # the text-only architecture (no vision, no processor)


@dataclass(frozen=True)
class Shape:
    """A released checkpoint's shapes at a width and depth this CPU runs.

    Real: the vocabulary's rows and the special tokens' ids, head_dim and the rotary
    sections, the context length, the vision tower's patching (patch 14, temporal patch 2,
    spatial merge 2), its window and full-attention blocks, the processor's pixel bounds and
    whether the embedding is tied. Small: the widths, the depths and the head counts.
    """

    text: dict
    vision: dict
    vocab_rows: int = 151_936  # the embedding's rows (Qwen2.5's tokenizer holds 151,665 tokens)
    specials_at: int = 151_643  # <|endoftext|>'s id; Qwen's other special tokens follow it in order
    min_pixels: int = 56 * 56  # the processor's bounds (Qwen2.5-VL's preprocessor_config.json)
    max_pixels: int = 12_845_056


# Qwen2.5-VL's config.json (3B, 7B): rope_theta 1e6, 128,000 positions, head_dim 128 with mrope_section
# [16, 24, 24]; the vision tower windowed (112 px) but at blocks 7, 15, 23, 31 of 32, here every second block
# of 4 with the last full.
_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}
_VISION_25 = dict(depth=4, hidden_size=128, intermediate_size=344, num_heads=2, window_size=112,
                  fullatt_block_indexes=[1, 3], tokens_per_second=2)
SHAPES = {
    # 3B: hidden 2048 in 16 heads of 128 with 2 key/value heads, SwiGLU 11,008, tied embedding
    "qwen2.5-vl-3b": Shape(
        text=dict(hidden_size=256, intermediate_size=1376, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=128_000, rope_parameters=_ROPE,
                  tie_word_embeddings=True),
        vision=dict(_VISION_25, out_hidden_size=256)),
    # 7B: hidden 3584 in 28 heads of 128 with 4 key/value heads, SwiGLU 18,944, untied output projection
    "qwen2.5-vl-7b": Shape(
        text=dict(hidden_size=512, intermediate_size=2704, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, max_position_embeddings=128_000, rope_parameters=_ROPE,
                  tie_word_embeddings=False),
        vision=dict(_VISION_25, out_hidden_size=512)),
}


def model_config(tokenizer: PreTrainedTokenizerFast, arch: str = "qwen2-vl", shape: Shape | None = None
                 ) -> PretrainedConfig:
    ids = tokenizer.convert_tokens_to_ids
    config_cls = ARCHS[arch][0]
    text = TEXT if shape is None else shape.text
    return config_cls(
        text_config=dict(
            **text,
            vocab_size=len(tokenizer) if shape is None else shape.vocab_rows,
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            initializer_range=0.05,
        ),
        vision_config=dict(
            **(VISION[arch] if shape is None else shape.vision), patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, initializer_range=0.05
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, arch: str = "qwen2-vl",
                    max_pixels: int = IMAGE_MAX_PIXELS, min_pixels: int = IMAGE_MIN_PIXELS) -> Qwen2VLProcessor:
    template = resources.files("vlrl.model").joinpath("chat_template.jinja").read_text()
    tokenizer.chat_template = template
    return ARCHS[arch][2](
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=template,
    )


def build_tiny_model(out: str | Path, seed: int = 0, arch: str = "qwen2-vl",
                     max_pixels: int | None = None, shape: str | None = None) -> Path:
    """Write a tiny random Qwen2-VL folder to ``out``; the same seed gives the same bytes.

    ``max_pixels`` caps the image size the processor feeds the model (each 28 x 28 pixels
    is one image token; default: 448 x 448, or the shape's): the quickstart's small cap
    keeps a CPU step short. ``shape`` (a key of ``SHAPES``) builds a released checkpoint's
    shapes at a small width and depth instead (its architecture, vocabulary, special-token
    ids, context length, vision patching and pixel bounds).
    """
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; known: {sorted(SHAPES)}")
    if arch == TEXT_ONLY and shape is None:
        return build_tiny_text_model(out, seed)
    form = SHAPES[shape] if shape is not None else None
    arch = "qwen2.5-vl" if shape is not None else arch
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny model arch {arch!r}; supported: {sorted([*ARCHS, TEXT_ONLY])}")
    min_pixels = IMAGE_MIN_PIXELS if form is None else form.min_pixels
    max_pixels = max_pixels or (IMAGE_MAX_PIXELS if form is None else form.max_pixels)
    if not min_pixels <= max_pixels:
        raise ValueError(f"max_pixels must be >= {min_pixels}, got {max_pixels}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = (build_tokenizer() if form is None else
                 build_tokenizer(form.specials_at, form.text["max_position_embeddings"]))
    config = model_config(tokenizer, arch, form)
    torch.manual_seed(seed)
    model = ARCHS[arch][1](config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(out)
    build_processor(tokenizer, arch, max_pixels, min_pixels).save_pretrained(out)
    return out


def build_tiny_text_model(out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2 language model to ``out`` (the VLM's text sizes, tokenizer and chat template, 1-D
    rotary positions, no vision); the same seed gives the same bytes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = resources.files("vlrl.model").joinpath("chat_template.jinja").read_text()
    ids = tokenizer.convert_tokens_to_ids
    text = {**TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    config = Qwen2Config(**text, vocab_size=len(tokenizer), bos_token_id=ids("<|endoftext|>"),
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), initializer_range=0.05)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id,
                                               eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
