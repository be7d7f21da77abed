"""A classic reward model's scalar head on both engines: it scores sigmoid(w . h + b) at the trajectory's
last token, streamed in chunks as at once."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from test_cli import vlrl
from test_verifier import streamed
from vlrl.bench.parity import two_turn_rollout
from vlrl.rewards.head import HEAD_FILE, read_reward_head, write_reward_model
from vlrl.rewards.verifier import Verifier
from vlrl.trainer.logprobs import last_hidden

ENGINES = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]
BIAS = 0.3


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_dir, trainer_model):
    """The tiny VLM with a random head (as a *ForSequenceClassification checkpoint stores it), written by the CLI."""
    root = tmp_path_factory.mktemp("rm")
    hidden = trainer_model.config.text_config.hidden_size
    weight = torch.randn(1, hidden, generator=torch.Generator().manual_seed(0)) * 0.2
    save_file({"score.weight": weight, "score.bias": torch.tensor([BIAS])}, str(root / "head.safetensors"))
    vlrl("model", "reward-head", str(tiny_dir), "--head", str(root / "head.safetensors"), "--out", str(root / "rm"))
    return root / "rm", weight[0]


@pytest.fixture(scope="module", params=ENGINES)
def rm_engine(request, reward_model, loop):
    if request.param == "hf":
        from vlrl.engines.hf import HFEngine

        engine = HFEngine(reward_model[0])
    else:
        from vlrl.engines.vllm import VLLMEngine

        engine = loop.run_until_complete(VLLMEngine.create(reward_model[0]))
    yield engine
    loop.run_until_complete(engine.close())


@pytest.fixture(scope="module")
def trajectory(hf_engine, run, tokenizer, vision):
    """A two-turn trajectory with two images, sampled by the policy (the base model)."""
    return run(two_turn_rollout(hf_engine, tokenizer, vision, "rm-traj", seed=5))


def final_hidden(model, vision, ids, images) -> torch.Tensor:
    """The base model's last hidden state (after the final norm) at the last of ``ids``."""
    seen = []
    hook = model.model.language_model.norm.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            last_hidden(model, vision, [(ids, images)])
    finally:
        hook.remove()
    return seen[0][0, len(ids) - 1]


def test_the_score_is_the_heads_value_at_the_last_token(rm_engine, run, tokenizer, vision, trainer_model,
                                                        reward_model, trajectory):
    """Against w . h + b computed from the base model's hidden state: the head is read exactly, the
    policy's cut-off turn closed first."""
    folder, weight = reward_model
    verifier = Verifier(rm_engine, tokenizer, head=read_reward_head(folder))
    ids = list(trajectory.token_ids)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    closed = ids if ids[-1] == end else ids + [end]
    expected = float(final_hidden(trainer_model, vision, closed, trajectory.images).double() @ weight.double()) + BIAS
    verdict = run(verifier.score("rm-whole", ids, trajectory.images))
    assert math.isclose(verdict.score, 1 / (1 + math.exp(-expected)), abs_tol=1e-5), (verdict.score, expected)
    assert abs(expected - BIAS) > 0.1  # the head, not only its bias, moves the score


def test_chunks_of_any_size_score_as_the_whole_trajectory(rm_engine, run, tokenizer, reward_model, trajectory):
    verifier = Verifier(rm_engine, tokenizer, head=read_reward_head(reward_model[0]))
    run(rm_engine.reset_prefix_cache())
    whole = run(verifier.score("rm-at-once", trajectory.token_ids, trajectory.images))
    for chunk in (1, 7, 64):
        run(rm_engine.reset_prefix_cache())
        verdict = run(streamed(verifier, trajectory, chunk, f"rm-chunks-{chunk}"))
        assert abs(verdict.score - whole.score) < 1e-5, (chunk, verdict.score, whole.score)
        assert verdict.early_tokens >= len(trajectory.token_ids) // 2 and verdict.late_tokens < whole.late_tokens


def test_bad_heads_and_inputs_are_named(tmp_path, tiny_dir, hf_engine, run, tokenizer, reward_model):
    head = tmp_path / "head.safetensors"
    save_file({"v_head.weight": torch.zeros(1, 7)}, str(head))
    with pytest.raises(ValueError, match=r"no tensor 'score.weight'; it holds \['v_head.weight'\]"):
        write_reward_model(tiny_dir, head, tmp_path / "a")
    with pytest.raises(ValueError, match="v_head.weight has 7 values, the model's hidden size is 256"):
        write_reward_model(tiny_dir, head, tmp_path / "a", key="v_head.weight")
    with pytest.raises(ValueError, match="not over its base"):
        write_reward_model(tiny_dir, head, tiny_dir)
    with pytest.raises(FileNotFoundError, match="reward head file"):
        write_reward_model(tiny_dir, tmp_path / "none.safetensors", tmp_path / "a")
    bad = vlrl("model", "reward-head", str(tmp_path / "no-model"), "--head", str(head), "--out", str(tmp_path / "b"),
               check=False)
    assert bad.returncode == 2 and "no-model" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / HEAD_FILE).write_text(json.dumps({"token": "<|quad_start|>"}))
    with pytest.raises(ValueError, match="not a reward head"):
        read_reward_head(tmp_path / "c")
    assert read_reward_head(tiny_dir) is None
    verifier = Verifier(hf_engine, tokenizer, head=read_reward_head(reward_model[0]))
    poisoned = tokenizer.encode("a b", add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|quad_start|>")]
    with pytest.raises(ValueError, match="contains the reward head's token id"):
        run(verifier.score("poisoned", poisoned, []))


def test_vlrl_train_reads_a_reward_model_folder_by_its_head(train_config, reward_model, hf_engine, run, tokenizer,
                                                            trajectory):
    """``verifier.model`` names the folder; nothing else in the config changes."""
    from vlrl.config import TrainConfig, load_config
    from vlrl.recipes.parts import open_verifier

    cfg = load_config(TrainConfig, train_config, [f"verifier.model={reward_model[0]}", "verifier.weight=0.5"])
    verifier, own = run(open_verifier(cfg, hf_engine, tokenizer))
    try:
        assert own is not None and own is not hf_engine
        by_train = run(verifier.score("train-rm", trajectory.token_ids, trajectory.images)).score
        direct = Verifier(own, tokenizer, head=read_reward_head(reward_model[0]))
        by_head = run(direct.score("direct-rm", trajectory.token_ids, trajectory.images)).score
        assert abs(by_train - by_head) < 1e-5  # the second reads the first's cached prefix
        asked = Verifier(own, tokenizer)  # the same folder asked Yes / No scores otherwise
        assert abs(run(asked.score("asked-rm", trajectory.token_ids, trajectory.images)).score - by_train) > 1e-3
    finally:
        run(own.close())
