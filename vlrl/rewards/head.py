"""A classic reward model's scalar head, stored so that both engines can run it unchanged.

A scalar head scores a trajectory with ``w . h + b``, where ``h`` is the model's final
hidden state at the trajectory's last token. That is a logit: writing ``w`` into the
output row of a token the prompts never use (``token``) and zeros into the row of
another (``zero_token``) makes

    log P(token) - log P(zero_token) = w . h - 0

so ``Engine.score_next`` over those two tokens, which both engines serve with prefix
reuse and chunked streaming, reads the head exactly. ``vlrl model reward-head`` builds
such a folder from a VLM and a head (``score.weight`` of a ``*ForSequenceClassification``
checkpoint, TRL's reward models); ``reward_head.json`` in the folder marks it, and the
verifier then scores with ``sigmoid(w . h + b)`` instead of asking Yes or No. With tied
input and output embeddings the two tokens' input embeddings change too, which is why
they must be tokens no prompt contains (the verifier refuses a trajectory that does).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HEAD_FILE = "reward_head.json"
TOKEN, ZERO_TOKEN = "<|quad_start|>", "<|quad_end|>"  # Qwen-VL special tokens no chat prompt uses


@dataclass(frozen=True)
class RewardHead:
    """Where a reward-model folder keeps its head: ``score = w . h + bias``, ``w`` in ``token``'s output row."""

    token: str
    zero_token: str
    bias: float = 0.0


def read_reward_head(model_dir: str | Path) -> RewardHead | None:
    """The head of a reward-model folder, or None for any other model folder."""
    path = Path(model_dir) / HEAD_FILE
    if not path.is_file():
        return None
    try:
        return RewardHead(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: not a reward head ({e}); expected {{token, zero_token, bias}}") from None


def write_reward_model(base: str | Path, head: str | Path, out: str | Path, key: str = "score.weight",
                       token: str = TOKEN, zero_token: str = ZERO_TOKEN) -> Path:
    """Copy the VLM folder ``base`` to ``out`` with the head in ``head`` (a safetensors file holding
    ``key``, shape (hidden,) or (1, hidden), and optionally the bias beside it) written into it."""
    from transformers import AutoConfig, AutoTokenizer

    from vlrl.engines.base import check_model_dir

    base, out = check_model_dir(base), Path(out)
    if out.resolve() == base.resolve():
        raise ValueError(f"the reward model must go to a new folder, not over its base {str(base)!r}")
    if not Path(head).is_file():
        raise FileNotFoundError(f"reward head file {str(head)!r} does not exist")
    tensors = load_file(str(head))
    if key not in tensors:
        raise ValueError(f"{head}: no tensor {key!r}; it holds {sorted(tensors)}")
    config = AutoConfig.from_pretrained(base)
    text = getattr(config, "text_config", config)
    weight = tensors[key].reshape(-1).float()
    if weight.numel() != text.hidden_size:
        raise ValueError(f"{head}: {key} has {weight.numel()} values, the model's hidden size is {text.hidden_size}")
    bias_key = key.rsplit(".", 1)[0] + ".bias"
    bias = float(tensors[bias_key].reshape(-1)[0]) if bias_key in tensors else 0.0
    vocab = AutoTokenizer.from_pretrained(base).get_vocab()
    missing = [t for t in (token, zero_token) if t not in vocab]
    if missing or token == zero_token:
        raise ValueError(f"the head needs two distinct tokens of the vocabulary, got {token!r} and {zero_token!r}")
    rows = {vocab[token]: weight, vocab[zero_token]: torch.zeros_like(weight)}
    shutil.copytree(base, out, dirs_exist_ok=True)
    tied = getattr(text, "tie_word_embeddings", None)
    for shard, names in _output_weights(base, config.tie_word_embeddings if tied is None else tied).items():
        state = load_file(str(base / shard))
        for name in names:
            for row, values in rows.items():
                state[name][row] = values.to(state[name].dtype)
        save_file(state, str(out / shard), metadata={"format": "pt"})
    (out / HEAD_FILE).write_text(json.dumps(asdict(RewardHead(token, zero_token, bias)), indent=2) + "\n")
    return out


def _output_weights(model_dir: Path, tied: bool) -> dict[str, list[str]]:
    """shard file -> the output-projection weights in it: ``lm_head.weight``, and the input embeddings when tied."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards: dict[str, str] = json.loads(index.read_text())["weight_map"]
    else:
        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
            shards = {name: "model.safetensors" for name in f.keys()}
    heads = [n for n in shards if n.endswith("lm_head.weight") or (tied and n.endswith("embed_tokens.weight"))]
    if not heads:
        raise ValueError(f"{model_dir}: no lm_head.weight or embed_tokens.weight among its weights")
    found: dict[str, list[str]] = {}
    for name in heads:
        found.setdefault(shards[name], []).append(name)
    return found
