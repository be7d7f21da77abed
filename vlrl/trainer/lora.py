"""LoRA through ``peft`` for large models: adapters on the language model's projections, merged for the engine.

The engine never sees adapters: ``merged_state_dict`` gives every weight under the base
model's own names, with each adapted projection replaced by W + scale * B @ A (computed
without touching W, so repeated pushes cannot drift). For a model without adapters it is
the plain state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

LANGUAGE_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PREFIX = "base_model.model."


def apply_lora(model: Any, rank: int, alpha: float, dropout: float = 0.0,
               target_modules: str = LANGUAGE_PROJECTIONS) -> PeftModel:
    """Freeze ``model`` and wrap it with rank-``rank`` adapters on the modules ``target_modules`` matches."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=target_modules))


def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """Every weight under the base model's names, adapters merged in; detached."""
    if not isinstance(model, PeftModel):
        return {k: v.detach() for k, v in model.state_dict().items()}
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if "lora_" in name:
                continue
            merged[name.removeprefix(PREFIX).replace(".base_layer.", ".")] = value.detach()
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and module.active_adapters:
                key = name.removeprefix(PREFIX) + ".weight"
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
                merged[key] = merged[key] + delta
    return merged
