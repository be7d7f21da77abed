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
