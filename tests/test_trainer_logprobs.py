import pytest
import torch
from transformers import AutoProcessor

from vlrl.demo import bar_chart
from vlrl.trainer.logprobs import sequence_logprobs


def two_image_chat(processor):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which bar is the highest?"}]},
        {"role": "assistant", "content": "Let me look closer at the second bar."},
        {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "Execution success."}]},
        {"role": "assistant", "content": "FINAL ANSWER: 2"},
    ]
    return processor.apply_chat_template(messages, tokenize=False)


def test_matches_transformers_own_multimodal_positions(tiny_dir, trainer_model, vision):
    """Reference: the processor's batch and the model's own rope index (mm_token_type_ids)."""
    processor = AutoProcessor.from_pretrained(tiny_dir)
    images = [bar_chart([3, 7, 5]), bar_chart([3, 7, 5], size=(168, 112), highlight=1)]
    enc = processor(text=[two_image_chat(processor)], images=images, return_tensors="pt")
    with torch.no_grad():
        trainer_model.model.rope_deltas = None
        ref = torch.log_softmax(trainer_model(**enc).logits[0, :-1].float(), -1)
        ids = enc["input_ids"][0]
        ref = ref.gather(-1, ids[1:, None]).squeeze(-1)
        ours = sequence_logprobs(trainer_model, vision, [(ids.tolist(), images)])[0]
    assert len(vision.pad_runs(ids.tolist())) == 2
    assert torch.allclose(ours.logprobs, ref, atol=1e-5)
    assert ours.entropy.shape == ours.logprobs.shape and (ours.entropy > 0).all()


def test_batching_and_padding_change_nothing(trainer_model, vision, tokenizer):
    from vlrl.demo import question_prompt

    a_im, b_im = bar_chart([1, 2, 3]), bar_chart([4, 1], size=(140, 84))
    a = question_prompt(tokenizer, vision, "Which bar is the highest?", a_im) + tokenizer.encode(" 3 bars")
    b = question_prompt(tokenizer, vision, "What is the total value of all the bars in the chart?", b_im)
    c = tokenizer.encode("a text-only sequence without images at all")
    with torch.no_grad():
        alone = [sequence_logprobs(trainer_model, vision, [s])[0] for s in [(a, [a_im]), (b, [b_im]), (c, [])]]
        batched = sequence_logprobs(trainer_model, vision, [(a, [a_im]), (b, [b_im]), (c, [])])
    for x, y in zip(alone, batched):
        assert torch.allclose(x.logprobs, y.logprobs, atol=1e-5)
        assert torch.allclose(x.entropy, y.entropy, atol=1e-4)


def test_bad_sequences_are_named(trainer_model, vision, tokenizer):
    from vlrl.demo import question_prompt

    im = bar_chart([1, 2])
    ids = question_prompt(tokenizer, vision, "q", im)
    with pytest.raises(ValueError, match=r"sequence 1: 1 <\|image_pad\|> run\(s\) in the token ids but 0 image"):
        sequence_logprobs(trainer_model, vision, [(ids, [im]), (ids, [])])
    with pytest.raises(ValueError, match="sequence 0: needs at least 2 tokens"):
        sequence_logprobs(trainer_model, vision, [([5], [])])


def direct_scores(model, vision, ids, images):
    """The reference: the model's own whole logits, log-softmax in float32."""
    from vlrl.trainer.logprobs import last_hidden

    hidden, _, _ = last_hidden(model, vision, [(ids, images)])
    logp = torch.log_softmax(model.lm_head(hidden[0, :-1]).float(), -1)
    return logp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_chunked_head_equals_the_whole_logits_in_values_and_gradients(tiny_dir, vision, tokenizer, chunk):
    """Chunks of 1 and 7 positions (and the default, one chunk here) against the direct computation: the same
    logprobs and entropy to 1e-6, and the same gradient in every weight, the tied embedding and the vision
    tower included; the model's output projection is never called on a position (its weight is used chunk by
    chunk)."""
    from transformers import AutoModelForImageTextToText

    from vlrl.demo import question_prompt

    im = bar_chart([2, 5, 3])
    ids = question_prompt(tokenizer, vision, "Which bar is the highest?", im) + tokenizer.encode(" the second bar")
    grads = []
    for direct in (True, False):
        model = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)
        calls = []
        model.lm_head.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
        if direct:
            logp, entropy = direct_scores(model, vision, ids, [im])
        else:
            scores = sequence_logprobs(model, vision, [(ids, [im])], chunk=chunk)[0]
            logp, entropy = scores.logprobs, scores.entropy
            assert calls and all(shape[1] == 0 for shape in calls)  # the model's own head keeps no position
            assert not entropy.requires_grad
        (logp * torch.linspace(-1, 1, len(logp))).sum().backward()
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, logp, entropy))
    (want, want_logp, want_entropy), (got, got_logp, got_entropy) = grads
    assert torch.allclose(got_logp, want_logp, atol=1e-6) and torch.allclose(got_entropy, want_entropy, atol=1e-6)
    assert want.keys() == got.keys() and any("visual" in n for n in want)
    for name in want:
        assert (got[name] - want[name]).abs().max() <= 1e-5 * want[name].abs().max(), name  # float32 sum order


def test_chunked_head_through_lora(tiny_dir, vision, tokenizer):
    """Under LoRA the frozen head gets no gradient and the adapters get the direct computation's."""
    from transformers import AutoModelForImageTextToText

    from vlrl.trainer.lora import apply_lora

    ids = tokenizer.encode("a text-only sequence to score under adapters")
    grads = []
    for direct in (True, False):
        torch.manual_seed(0)
        model = apply_lora(AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32), 4, 8.0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)  # B starts at zero: give the adapters a gradient path to A
        if direct:
            logp = direct_scores(model.get_base_model(), vision, ids, [])[0]
        else:
            logp = sequence_logprobs(model, vision, [(ids, [])], chunk=3)[0].logprobs
        logp.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and all("lora_" in n for n in grads[1])
    for name in grads[0]:
        assert (grads[1][name] - grads[0][name]).abs().max() <= 1e-5 * grads[0][name].abs().max(), name


def test_chunk_must_be_positive(trainer_model, vision, tokenizer):
    with pytest.raises(ValueError, match="chunk must be >= 1 position, got 0"):
        sequence_logprobs(trainer_model, vision, [(tokenizer.encode("two tokens or more"), [])], chunk=0)
