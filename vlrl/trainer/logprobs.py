"""Trainer-side token logprobs: Trajectory ids + images --> per-token logprob and entropy.

This is the forward every loss uses, and the one the engines' behavior logprobs are
checked against (mean |Δ| < 1e-3 in fp32). Sequences are right-padded into one batch;
all images of all sequences go through the vision tower in order; rotary positions are
the 3-D positions of each whole sequence. The decoder's hidden states go through the
output projection a chunk at a time (``vlrl.trainer.head``): a sequence's full logits are
never in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from peft import PeftModel
from PIL import Image
from transformers import DynamicCache, PreTrainedModel

from vlrl.model.rope import mrope_positions
from vlrl.trainer.head import head_logprobs
from vlrl.types import Trajectory
from vlrl.vision import VisionInputs


@dataclass(frozen=True)
class TokenScores:
    """For a sequence of L ids: entry t-1 scores token t given tokens < t (t = 1..L-1)."""

    logprobs: torch.Tensor  # (L - 1,)
    entropy: torch.Tensor  # (L - 1,)


def output_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The language model's final norm (whose output is the last hidden state) and its output projection; through
    LoRA's wrapper."""
    hf = model.get_base_model() if isinstance(model, PeftModel) else model
    return hf.model.language_model.norm, hf.get_output_embeddings()


def last_hidden(model: Any, vision: VisionInputs, sequences: Sequence[tuple[Sequence[int], Sequence[Image.Image]]]
                ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The decoder's last hidden states over right-padded ``sequences``: (B, T, H), input ids (B, T), lengths.

    The output projection is not applied: callers project what they need (``head_logprobs``, a value head).
    The model's own forward runs (so a sharded model gathers its weights as it does for any forward, and
    keeps the root's gathered after it) with no position's logits kept; the final norm's output is read.
    """
    images: list[Image.Image] = []
    for i, (ids, ims) in enumerate(sequences):
        if len(ids) < 2:
            raise ValueError(f"sequence {i}: needs at least 2 tokens to score, got {len(ids)}")
        vision.check(ids, [vision.token_count(im) for im in ims], where=f"sequence {i}")
        images.extend(ims)
    device = next(model.parameters()).device
    lengths = [len(ids) for ids, _ in sequences]
    pad_id = model.config.text_config.pad_token_id or 0
    input_ids = torch.full((len(sequences), max(lengths)), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, (ids, _) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    batch = vision.encode(images)
    grid = batch.grid_thw if batch is not None else None
    positions = mrope_positions(model, input_ids, grid, attention_mask)
    seen: list[torch.Tensor] = []
    hook = output_head(model)[0].register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=positions.to(device),
            pixel_values=batch.pixel_values.to(device, model.dtype) if batch is not None else None,
            image_grid_thw=grid.to(device) if grid is not None else None,
            use_cache=False,
            logits_to_keep=torch.zeros(0, dtype=torch.long, device=device),
        )
    finally:
        hook.remove()
    return seen[-1], input_ids.to(device), lengths


def forward_from(model: PreTrainedModel, vision: VisionInputs, ids: Sequence[int], images: Sequence[Image.Image],
                 start: int, past: Any = None, hidden_states: bool = False) -> Any:
    """The model's forward over ``ids[start:]`` of one sequence whose first ``start`` ids are in ``past`` (its KV
    cache, None when ``start`` is 0); the output's ``past_key_values`` covers all of ``ids``. No image run may
    straddle ``start``: the images before it are in ``past``, those after it go through the vision tower."""
    prepared = vision.prepare_for(ids, images, where="sequence")
    runs = vision.pad_runs(ids)
    if any(s < start < e for s, e in runs):
        raise ValueError(f"sequence: position {start} cuts an image run; a piece must hold whole images")
    positions = mrope_positions(model, torch.tensor([list(ids)]), vision.grid(prepared))[:, :, start:]
    batch = vision.encode([im for im, (s, _) in zip(images, runs) if s >= start])
    device = next(model.parameters()).device
    return model(
        input_ids=torch.tensor([list(ids[start:])], device=device),
        position_ids=positions.to(device),
        past_key_values=past if past is not None else DynamicCache(config=model.config),
        pixel_values=batch.pixel_values.to(device, model.dtype) if batch is not None else None,
        image_grid_thw=batch.grid_thw.to(device) if batch is not None else None,
        use_cache=True,
        output_hidden_states=hidden_states,
    )


def sequence_logprobs(
    model: PreTrainedModel,
    vision: VisionInputs,
    sequences: Sequence[tuple[Sequence[int], Sequence[Image.Image]]],
    chunk: int | None = None,
) -> list[TokenScores]:
    """Score every next token of each (ids, images) sequence under ``model``; the logits are formed ``chunk``
    positions at a time (``head_logprobs``), never whole."""
    if not sequences:
        return []
    hidden, input_ids, lengths = last_hidden(model, vision, sequences)
    # only the positions that score a token of their own sequence: no padding goes through the head
    rows = [hidden[r, : n - 1] for r, n in enumerate(lengths)]
    targets = torch.cat([input_ids[r, 1:n] for r, n in enumerate(lengths)])
    logprobs, entropy = head_logprobs(torch.cat(rows), output_head(model)[1], targets, chunk)
    sizes = [n - 1 for n in lengths]
    return [TokenScores(lp, ent) for lp, ent in zip(logprobs.split(sizes), entropy.split(sizes))]


def trajectory_logprobs(
    model: PreTrainedModel, vision: VisionInputs, trajectories: Sequence[Trajectory]
) -> list[TokenScores]:
    """``sequence_logprobs`` over trajectories (their token ids and images, in order)."""
    return sequence_logprobs(model, vision, [(t.token_ids, t.images) for t in trajectories])
