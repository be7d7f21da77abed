"""The HF engine's decoding internals: a KV cache that grows in place, and grouped heads read in place."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, DynamicCache

from vlrl.engines.kv_cache import ROOM, left_padded, select_rows
from vlrl.model.attention import GROUPED, attention_for

LENGTHS = (9, 23, 40)  # three prompts, left-padded into one batch


def padded_batch(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, positions) of three text prompts of ``LENGTHS``, left-padded to the longest."""
    width = max(LENGTHS)
    ids = torch.tensor([[0] * (width - n) + [40 + (7 * i + 3 * r) % 900 for i in range(n)]
                        for r, n in enumerate(LENGTHS)])
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in LENGTHS])
    positions = (mask.cumsum(1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    return ids, mask, positions


def decode(model, cache_of, steps: int) -> list[torch.Tensor]:
    """Prefill the padded batch, move its KV into ``cache_of(layers)``, then decode ``steps`` greedy tokens; each
    step's logits."""
    ids, mask, positions = padded_batch(model)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = cache_of([[(k, v) for k, v, *_ in out.past_key_values]])
        token, pos, logits = out.logits[:, -1:].argmax(-1), positions[:, :, -1:] + 1, []
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(len(LENGTHS), 1, dtype=torch.long)], 1)
            out = model(input_ids=token, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
            token, pos = out.logits[:, -1:].argmax(-1), pos + 1
    return logits


def test_a_growing_cache_decodes_exactly_what_transformers_cache_does(trainer_model):
    """Past its first room (the buffer moves to a larger one) and its second, every step's logits are the same."""
    steps = 2 * ROOM + 2 * max(LENGTHS)
    ours = decode(trainer_model, left_padded, steps)
    theirs = decode(trainer_model, lambda parts: DynamicCache(ddp_cache_data=parts[0]), steps)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_rows_join_left_padded_and_leave_without_their_shared_padding():
    """What the engine's batch does as requests join and end: each row keeps its own keys and values, in place."""
    a, b = torch.randn(2, 2, 7, 4), torch.randn(1, 2, 3, 4)
    cache = left_padded([[(a, a + 1)], [(b, b + 1)]])
    keys, values = cache.layers[0].keys, cache.layers[0].values
    assert keys.shape == (3, 2, 7, 4) and torch.equal(keys[:2], a) and torch.equal(values[2, :, 4:], b[0] + 1)
    assert not keys[2, :, :4].any() and not values[2, :, :4].any()  # the padding is zeros
    kept = select_rows(cache, torch.tensor([2]), lead=4)  # the two long rows leave
    assert torch.equal(kept.layers[0].keys, b) and torch.equal(kept.layers[0].values, b + 1)
    kept.layers[0].update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    assert torch.equal(kept.layers[0].keys[:, :, :3], b) and kept.get_seq_length() == 4


def test_a_view_of_the_growing_cache_stays_what_it_was():
    """A prefix the engine hands out (a running request's KV) is not changed by the steps decoded after it."""
    keys = torch.randn(2, 2, 5, 4)
    cache = left_padded([[(keys, keys.clone())]])
    before = cache.layers[0].keys
    copy = before.clone()
    for _ in range(ROOM + 3):  # through one move to a larger buffer
        cache.layers[0].update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    assert torch.equal(before, copy)
    assert cache.get_seq_length() == 5 + ROOM + 3 and torch.equal(cache.layers[0].keys[:, :, :5], keys)


@pytest.fixture(scope="module")
def grouped_model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32,
                                                       attn_implementation=GROUPED).eval()


def test_grouped_attention_gives_the_numbers_of_sdpa(trainer_model, grouped_model):
    """Under a padding mask, prefill and decode: the model has fewer key/value heads than query heads."""
    text = grouped_model.config.text_config
    assert text.num_key_value_heads < text.num_attention_heads
    assert trainer_model.config._attn_implementation == "sdpa"
    steps = 12
    ours = decode(grouped_model, left_padded, steps)
    theirs = decode(trainer_model, left_padded, steps)
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < 1e-5


def test_grouped_attention_only_on_a_cpu():
    assert attention_for("cpu") == GROUPED and attention_for(torch.device("cpu")) == GROUPED
    assert attention_for("cuda") == "sdpa"
