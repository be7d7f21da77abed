"""The policy losses the trainer calls (``vlrl.trainer.objective.Objective``), built from ``vlrl.algos.grpo``'s maths.

``ClippedSurrogate`` is GRPO's and PPO's: the clipped importance ratio times the advantage
(one per trajectory, broadcast over its tokens, or one per token), truncated importance
or masked importance weights on engine-sampled tokens when ``importance_cap`` > 0, and a KL term to the frozen
reference when ``kl_coef`` > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from vlrl.algos.grpo import aggregate, clipped_policy_loss, kl_penalty, off_policy_weights
from vlrl.config import LossConfig
from vlrl.trainer.batches import TrainItem
from vlrl.trainer.objective import LossInputs, LossTerms


@dataclass(frozen=True)
class ClippedSurrogate:
    """L = clipped surrogate (x truncated importance weights) + kl_coef x KL(pi_theta || pi_ref), aggregated as
    ``cfg.aggregation`` says."""

    cfg: LossConfig

    @property
    def figures(self) -> tuple[str, ...]:
        cfg = self.cfg
        return ("clip_fraction", "ratio", *(("kl",) if cfg.kl_coef > 0 else ()),
                *(("importance_weight",) if cfg.importance_cap else ()))

    @property
    def needs_reference(self) -> bool:
        return self.cfg.kl_coef > 0

    def normalizer(self, items: Sequence[TrainItem]) -> float:
        """The batch's policy tokens (token-mean) or its trajectories."""
        if self.cfg.aggregation == "token-mean":
            return float(sum(sum(it.trajectory.loss_mask[1:]) for it in items))
        return float(len(items))

    def __call__(self, inputs: LossInputs, total: float) -> LossTerms:
        return clipped_surrogate(inputs, self.cfg, total)


def clipped_surrogate(x: LossInputs, cfg: LossConfig, total: float) -> LossTerms:
    """The loss of one micro-batch and its token-summed figures (clip fraction, ratio, KL, importance weight).

    Importance weights (``off_policy_weights``: truncated or masked, per token or per
    sequence) apply to the tokens the engine sampled (scripted turns weigh 1): mu differs
    from pi_old by kernel numerics and, with deferral, by version.
    """
    weights = None
    if cfg.importance_cap:
        weights = off_policy_weights(x.old_logprobs, x.behavior_logprobs, cfg.importance_cap, x.sampled,
                                     cfg.importance_level, cfg.importance_mode)
    out = clipped_policy_loss(x.logprobs, x.old_logprobs, x.advantages, x.mask, cfg.clip_low, cfg.clip_high,
                              cfg.aggregation, weights, total, cfg.dual_clip)
    loss = out.loss
    tokens = float(x.mask.sum())
    sums = {"clip_fraction": out.clip_fraction * tokens, "ratio": out.ratio_mean * tokens}
    if cfg.kl_coef > 0:
        if x.ref_logprobs is None:
            raise ValueError("loss.kl_coef > 0 but the trainer computed no reference logprobs")
        kl = kl_penalty(x.logprobs, x.ref_logprobs, cfg.kl_estimator)
        loss = loss + cfg.kl_coef * aggregate(kl, x.mask, cfg.aggregation, total)
        sums["kl"] = float((kl.detach() * x.mask).sum())
    if weights is not None:
        sums["importance_weight"] = float((weights * x.mask).sum())
    return LossTerms(loss, sums)
