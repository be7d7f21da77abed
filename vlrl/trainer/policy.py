"""The policy update: trajectories with advantages --> one optimizer step, then the weights go to the engine.

A step runs the multimodal forward over micro-batches cut by a token budget, accumulates
the gradient of the clipped surrogate (``vlrl.algos.grpo``) with each micro-batch
normalized by the whole batch (so the sum is the batch's loss whatever the cut), clips
the gradient norm and steps AdamW and the LR schedule.

pi_old is the trainer's own policy before the rollout's first update: with one optimizer
step per rollout its logprobs are the forward's, detached, so the ratio starts at exactly 1;
with several (epochs x mini-batches) they are computed once beforehand (``logprobs``). The
engine sampled from mu, whose logprobs (recorded per token) differ by kernel numerics
and, with deferral, by version; ``importance_cap`` > 0 weights each token by
min(pi_old / mu, cap) (truncated importance sampling), and the mean |pi_old - mu| is
logged as ``parity``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
from transformers import PreTrainedModel

from vlrl.algos.grpo import Aggregation, KLEstimator, aggregate, clipped_policy_loss, kl_penalty, off_policy_weights
from vlrl.trainer.logprobs import sequence_logprobs
from vlrl.trainer.lora import apply_lora, merged_state_dict
from vlrl.types import Trajectory
from vlrl.vision import VisionInputs

if TYPE_CHECKING:  # vlrl.engines imports the config, which imports this module's configs
    from vlrl.engines.base import Engine


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


@dataclass(frozen=True)
class TrainItem:
    """A trajectory and its advantage: one number for all its policy tokens (GRPO), or one per
    token aligned with ``loss_mask[1:]`` (PPO's GAE)."""

    trajectory: Trajectory
    advantage: float | torch.Tensor
    old_logprobs: torch.Tensor | None = None  # pi_old per token (L - 1); None: this step's own forward, detached


class PolicyTrainer:
    """Owns the trainer's copy of the model, its optimizer and LR schedule."""

    def __init__(self, model: PreTrainedModel, vision: VisionInputs, optim: OptimConfig, loss: LossConfig,
                 total_steps: int, reference: PreTrainedModel | None = None):
        if loss.kl_coef > 0 and reference is None:
            raise ValueError("loss.kl_coef > 0 needs a reference model")
        self.model, self.vision, self.optim_cfg, self.loss_cfg = model, vision, optim, loss
        self.reference = reference
        if optim.lora_rank > 0:
            model = apply_lora(model, optim.lora_rank, optim.lora_alpha, optim.lora_dropout)
            self.model = model
        if optim.freeze_vision:
            vision_tower(model).requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                                           weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(optim, total_steps))
        self.version = 0

    def step(self, items: Sequence[TrainItem]) -> dict[str, float]:
        """One optimizer step over ``items``; returns the step's training metrics."""
        start = time.perf_counter()
        sums = self.backward(items)
        grad_norm = self._apply()
        cfg = self.loss_cfg
        tokens, engine_tokens = max(sums["tokens"], 1.0), max(sums["engine_tokens"], 1.0)
        metrics = {"loss": sums["loss"], "clip_fraction": sums["clipped"] / tokens, "ratio": sums["ratio"] / tokens,
                   "entropy": sums["entropy"] / tokens, "parity": sums["parity"] / engine_tokens,
                   "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0], "policy_tokens": sums["tokens"],
                   "forward_s": sums["forward_s"], "update_s": time.perf_counter() - start}
        if cfg.kl_coef > 0:
            metrics["kl"] = sums["kl"] / tokens
        if cfg.importance_cap:
            metrics["importance_weight"] = sums["weight"] / tokens
        self.scheduler.step()
        return metrics

    def backward(self, items: Sequence[TrainItem]) -> dict[str, float]:
        """Accumulate the gradient of the batch's loss over its micro-batches; returns token-summed figures."""
        if not items:
            raise ValueError("a policy step needs at least one trajectory")
        cfg = self.loss_cfg
        self.model.train()
        masks = [torch.tensor(it.trajectory.loss_mask[1:], dtype=torch.float32) for it in items]
        total = float(sum(m.sum() for m in masks)) if cfg.aggregation == "token-mean" else float(len(items))
        sums: dict[str, float] = {k: 0.0 for k in ("loss", "clipped", "ratio", "entropy", "kl", "parity",
                                                   "weight", "tokens", "engine_tokens", "forward_s")}
        for batch in micro_batches(items, self.optim_cfg.micro_batch_tokens):
            trajs = [it.trajectory for it in batch]
            t0 = time.perf_counter()
            scores = sequence_logprobs(self.model, self.vision, [(t.token_ids, t.images) for t in trajs])
            sums["forward_s"] += time.perf_counter() - t0
            logp = pad([s.logprobs for s in scores])
            mask = pad([torch.tensor(t.loss_mask[1:], dtype=torch.float32) for t in trajs])
            behavior = pad([torch.tensor(t.behavior_logprobs[1:]) for t in trajs])
            sampled = pad([torch.tensor([float(v >= 0) for v in t.versions[1:]]) for t in trajs]) * mask
            old = logp.detach() if batch[0].old_logprobs is None else pad([it.old_logprobs for it in batch])
            weights = off_policy_weights(old, behavior, cfg.importance_cap) * sampled + (1 - sampled) \
                if cfg.importance_cap else None
            if all(isinstance(it.advantage, float) for it in batch):
                advantages = torch.tensor([it.advantage for it in batch], dtype=torch.float32)
            else:
                advantages = pad([torch.as_tensor(it.advantage, dtype=torch.float32).expand(len(it.trajectory.token_ids)
                                                                                           - 1) for it in batch])
            out = clipped_policy_loss(logp, old, advantages, mask, cfg.clip_low, cfg.clip_high, cfg.aggregation,
                                      weights, total)
            loss = out.loss
            if cfg.kl_coef > 0:
                with torch.no_grad():
                    ref = pad([s.logprobs for s in sequence_logprobs(self.reference, self.vision,
                                                                      [(t.token_ids, t.images) for t in trajs])])
                kl = kl_penalty(logp, ref, cfg.kl_estimator)
                loss = loss + cfg.kl_coef * aggregate(kl, mask, cfg.aggregation, total)
                sums["kl"] += float((kl.detach() * mask).sum())
            loss.backward()
            n = float(mask.sum())
            entropy = pad([s.entropy.detach() for s in scores])
            sums["loss"] += float(loss.detach())
            sums["clipped"] += out.clip_fraction * n
            sums["ratio"] += out.ratio_mean * n
            sums["entropy"] += float((entropy * mask).sum())
            sums["tokens"] += n
            sums["parity"] += float(((old - behavior).abs() * sampled).sum())
            sums["engine_tokens"] += float(sampled.sum())
            if weights is not None:
                sums["weight"] += float((weights * mask).sum())
        return sums

    @torch.no_grad()
    def logprobs(self, items: Sequence[TrainItem]) -> list[torch.Tensor]:
        """The current policy's logprobs of each item's tokens: pi_old, when one rollout feeds several updates."""
        self.model.eval()
        out: list[torch.Tensor] = []
        for batch in micro_batches(items, self.optim_cfg.micro_batch_tokens):
            out += [s.logprobs for s in sequence_logprobs(self.model, self.vision,
                                                          [(it.trajectory.token_ids, it.trajectory.images)
                                                           for it in batch])]
        return out

    def imitate(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """One supervised step: maximize the log-likelihood of the policy tokens (loss mask 1) of ``trajectories``.

        The warm start on expert (or teacher) trajectories: the same ids, images and masks
        as RL, so the model learns the format and the tool protocol before RL improves it.
        """
        if not trajectories:
            raise ValueError("a supervised step needs at least one trajectory")
        self.model.train()
        start = time.perf_counter()
        total = float(sum(sum(t.loss_mask[1:]) for t in trajectories))
        loss_sum = correct = 0.0
        for batch in micro_batches(trajectories, self.optim_cfg.micro_batch_tokens):
            scores = sequence_logprobs(self.model, self.vision, [(t.token_ids, t.images) for t in batch])
            logp = pad([s.logprobs for s in scores])
            mask = pad([torch.tensor(t.loss_mask[1:], dtype=torch.float32) for t in batch])
            loss = aggregate(-logp, mask, "token-mean", total)
            loss.backward()
            loss_sum += float(loss.detach())
            correct += float(((logp.detach() > math.log(0.5)) * mask).sum())
        metrics = {"sft_loss": loss_sum, "sft_token_p_over_half": correct / max(total, 1.0),
                   "grad_norm": self._apply(), "lr": self.scheduler.get_last_lr()[0],
                   "update_s": time.perf_counter() - start}
        self.scheduler.step()
        return metrics

    def _apply(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        limit = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    async def push(self, engine: Engine) -> float:
        """Send the weights to ``engine`` as the next version; returns the seconds it took."""
        start = time.perf_counter()
        self.version += 1
        with torch.no_grad():
            await engine.update_weights(merged_state_dict(self.model), self.version)
        return time.perf_counter() - start


def micro_batches(items: Sequence[Any], budget: int) -> list[list[Any]]:
    """Consecutive runs of items (trajectories or TrainItems) whose padded size stays within ``budget`` tokens.

    An item longer than the budget goes alone (it cannot be split without breaking its images).
    """
    batches: list[list[Any]] = []
    current: list[Any] = []
    longest = 0
    for item in items:
        length = len(getattr(item, "trajectory", item).token_ids)
        if current and max(longest, length) * (len(current) + 1) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def lr_factor(cfg: OptimConfig, total_steps: int) -> Any:
    """The multiplier of the base LR at each step: linear warm-up, then constant / linear / cosine to 0."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant" or total_steps <= cfg.warmup_steps:
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def vision_tower(model: PreTrainedModel) -> torch.nn.Module:
    """The Qwen2-VL / Qwen2.5-VL vision encoder inside ``model`` (or inside its LoRA wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    tower = getattr(inner, "visual", None)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision tower at .model.visual")
    return tower


def pad(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right-pad 1-D tensors with zeros into one (B, T) tensor."""
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
