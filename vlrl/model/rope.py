"""Qwen's 3-D multimodal rotary positions, computed once for a whole sequence.

Text tokens advance one position each on all three axes; an image's tokens take
(t, h, w) grid positions starting where the text stopped, and the text after it
resumes at the largest position + 1. Computing them over the whole multi-image
sequence (not 1-D, not per turn) is what makes the engines' and the trainer's
logprobs agree after a tool returns an image.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def mrope_positions(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(3, B, L) positions for ``input_ids`` (B, L); padded slots get position 0.

    Uses the model's own ``get_rope_index`` so Qwen2-VL and Qwen2.5-VL each get theirs
    (through a LoRA wrapper too).
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    image_token_id = model.config.image_token_id
    mm_token_type_ids = (input_ids == image_token_id).to(torch.int32)
    positions, _ = model.model.get_rope_index(
        input_ids,
        mm_token_type_ids=mm_token_type_ids,
        image_grid_thw=image_grid_thw,
        attention_mask=attention_mask,
    )
    return positions
