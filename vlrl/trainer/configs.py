"""The trainer's config sections: plain dataclasses that load without torch.

``vlrl.config`` builds every command's config from them, so a bad value is reported
before torch, transformers or an engine is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlrl.types import Aggregation, KLEstimator


@dataclass
class OptimConfig:
    """AdamW, the learning-rate schedule, clipping and micro-batching."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"  # decay after warm-up, to 0 at the last step
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    micro_batch_tokens: int = 8192  # tokens per forward; the gradient accumulates over micro-batches
    freeze_vision: bool = False  # keep the vision tower as loaded
    lora_rank: int = 0  # > 0: train LoRA adapters on the language model's projections instead of every weight
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens must be >= 1, got {self.micro_batch_tokens}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")


@dataclass
class LossConfig:
    """The clipped surrogate and its regularizers."""

    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low: DAPO clip-higher
    aggregation: Aggregation = "token-mean"
    kl_coef: float = 0.0  # > 0: KL to the frozen reference model
    kl_estimator: KLEstimator = "k3"
    # > 0: truncated importance weights min(pi_old / mu, cap); 0: off; None: the run decides (vlrl train: 2.0
    # under rollout.schedule overlap, whose deferred tokens come from older weights, else off)
    importance_cap: float | None = None



@dataclass
class CriticConfig:
    """The value model: its own copy of a VLM (by default the policy's folder) plus a linear head."""

    model_path: str = ""  # empty: the policy's model folder
    lr: float = 1.0e-4
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    micro_batch_tokens: int = 8192
