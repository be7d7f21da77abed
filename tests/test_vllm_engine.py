import asyncio

import pytest

from vlrl.demo import bar_chart, question_prompt, tool_observation
from vlrl.types import SamplingParams

pytestmark = pytest.mark.vllm


def test_greedy_agrees_with_hf_token_for_token(hf_engine, vllm_engine, run, tokenizer, vision):
    cases = []
    for i, question in enumerate(["Which bar is the highest?", "How many bars are there?", "What is the sum?"]):
        image = bar_chart([1 + (i + j) % 5 for j in range(3 + i)], size=(112 + 28 * i, 112))
        cases.append((question_prompt(tokenizer, vision, question, image), [image]))
    # a trajectory with a tool image inserted mid-way
    first, edited = bar_chart([2, 6, 4]), bar_chart([2, 6, 4], highlight=1)
    prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", first)
    prompt += tokenizer.encode("Let me look.") + tool_observation(tokenizer, vision, "Execution success.", edited)
    cases.append((prompt, [first, edited]))
    cases.append((tokenizer.encode("<|im_start|>user\nNo image here.<|im_end|>\n<|im_start|>assistant\n"), []))

    async def both(engine):
        sp = SamplingParams(max_tokens=48, temperature=0)
        return await asyncio.gather(*[engine.complete(ids, ims, sp, f"agree-{i}") for i, (ids, ims) in enumerate(cases)])

    for hf, vl in zip(run(both(hf_engine)), run(both(vllm_engine))):
        assert hf.token_ids == vl.token_ids
        assert hf.finish_reason == vl.finish_reason
        assert max(abs(a - b) for a, b in zip(hf.logprobs, vl.logprobs)) < 1e-3


def test_missing_model_folder_is_named(tmp_path, run):
    from vlrl.engines.vllm import VLLMEngine

    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(VLLMEngine.create(tmp_path / "nowhere"))


def test_a_prompt_vllm_expanded_differently_is_refused():
    """Token-in token-out guard: vLLM's own placeholder expansion must reproduce our ids."""
    from types import SimpleNamespace

    from vlrl.engines.vllm import _check_expanded

    _check_expanded("ok", [1, 7, 7, 2], SimpleNamespace(prompt_token_ids=[1, 7, 7, 2]))
    with pytest.raises(RuntimeError, match="request 'r': vLLM ran a prompt of 5 tokens that differs from the 4 ids"):
        _check_expanded("r", [1, 7, 7, 2], SimpleNamespace(prompt_token_ids=[1, 7, 7, 7, 2]))
