"""The policy learner: trajectories with advantages --> one optimizer step, on this process's copy of the model.

A step runs the multimodal forward over micro-batches cut by a token budget, hands each
micro-batch's per-token tensors to the algorithm's loss (``objective``, from ``vlrl.algos``)
with the micro-batch normalized by the whole batch (so the sum is the batch's loss whatever
the cut), clips the gradient norm and steps AdamW and the LR schedule.

pi_old is the trainer's own policy before the rollout's first update: with one optimizer
step per rollout its logprobs are the forward's, detached, so the ratio starts at exactly 1;
with several (epochs x mini-batches) they are computed once beforehand (``logprobs``). The
engine sampled from mu, whose logprobs (recorded per token) differ by kernel numerics
and, with deferral, by version; the mean |pi_old - mu| is logged as ``parity``.

How the work is spread over ranks (shares, reductions, gathers, FSDP) is the ``parallel``
strategy's (``vlrl.trainer.parallel``): the default, ``Local``, is one process.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import torch
from transformers import PreTrainedModel

from vlrl.config import OptimConfig
from vlrl.trainer.batches import FILLER, TrainItem, length, micro_batches, pad
from vlrl.trainer.logprobs import TokenScores, sequence_logprobs
from vlrl.trainer.lora import apply_lora, merged_state_dict
from vlrl.trainer.objective import LossInputs, Objective
from vlrl.trainer.parallel import (
    GatherOptimizerState,
    GatherWeights,
    Imitate,
    Local,
    Logprobs,
    RankCall,
    Step,
    like,
    shard_model,
    vision_tower,
    whole,
)
from vlrl.trainer.streamed import LOGPROBS, StreamedScores
from vlrl.types import Trajectory
from vlrl.vision import VisionInputs

OWN = ("loss", "entropy", "parity", "tokens", "engine_tokens")  # the step's token-summed figures, beside the loss's


class PolicyTrainer:
    """Owns the trainer's copy of the model, its optimizer and LR schedule, and the frozen reference model."""

    def __init__(self, model: PreTrainedModel, vision: VisionInputs, optim: OptimConfig, objective: Objective,
                 total_steps: int, reference: PreTrainedModel | None = None, parallel: Local | None = None,
                 name: str = "policy"):
        if objective.needs_reference and reference is None:
            raise ValueError("the loss has a KL term (loss.kl_coef > 0): it needs a reference model")
        self.model, self.vision, self.optim_cfg, self.objective = model, vision, optim, objective
        self.reference = reference
        self.reference_version = 0  # bumped when the reference is reset: its streamed logprobs are then stale
        # the reference's logprobs streamed while trajectories decode (algo.stream_chunk_tokens)
        self.reference_scores = StreamedScores("reference", reference, vision, LOGPROBS,
                                               lambda: self.reference_version) if reference is not None else None
        self.parallel = parallel or Local()
        self.name = name  # remote ranks find this trainer by it (the warm start's sibling has another)
        if optim.lora_rank > 0:
            self.model = apply_lora(model, optim.lora_rank, optim.lora_alpha, optim.lora_dropout)
        if optim.freeze_vision:
            vision_tower(self.model).requires_grad_(False)
        if optim.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.total_steps = total_steps
        self.optimizer, self.scheduler = self._optimizer()
        self.version = 0  # of the weights: 0 as loaded, + 1 at each push to the engines (vlrl.recipes.train)

    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        cfg = self.optim_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, self.total_steps))

    def shard(self) -> None:
        """Shard the model, the reference model and the optimizer state over the process group (FSDP2).

        Every rank holds the same whole model and optimizer when it calls this (no message is
        sent); afterwards each keeps its slice. LoRA adapters are not sharded.
        """
        if self.parallel.group is None:
            raise ValueError("sharding needs a process group (distributed.world_size > 1)")
        if self.optim_cfg.lora_rank > 0:
            raise ValueError("LoRA adapters are not sharded: use distributed.strategy dp with optim.lora_rank > 0")
        full, schedule = self.optimizer.state_dict(), self.scheduler.state_dict()
        for model in (self.model, self.reference):
            if model is not None:
                shard_model(model, self.parallel.group, self.device)
        self.optimizer, self.scheduler = self._optimizer()
        self.scheduler.load_state_dict(schedule)
        params = [p for p in self.model.parameters() if p.requires_grad]
        for index, state in full["state"].items():
            full["state"][index] = {k: like(v, params[index]) for k, v in state.items()}
        self.optimizer.load_state_dict(full)  # last: the schedule's construction set the LR of its step 0
        self.parallel.sharded = True

    def sibling(self, optim: OptimConfig, total_steps: int, name: str) -> PolicyTrainer:
        """A trainer of the same model with an optimizer of its own (the warm start's), on every rank."""
        self.parallel.open(name, optim, total_steps)
        return PolicyTrainer(self.model, self.vision, optim, self.objective, total_steps, self.reference,
                             self.parallel, name)

    def reset_reference(self) -> None:
        """The reference model (KL) becomes a copy of the model as it is now, on every rank."""
        if self.reference is None:
            raise ValueError("this trainer has no reference model (loss.kl_coef is 0)")
        sharded = self.parallel.sharded
        self.reference.load_state_dict(self.model.state_dict() if sharded else merged_state_dict(self.model))
        self.reference_version += 1
        self.parallel.reset_reference()

    def with_reference(self, items: Sequence[TrainItem]) -> list[TrainItem]:
        """``items``, each with the reference's logprobs where they were streamed while it decoded (the rest of
        the trajectory computed now); the others are left to each step's forward."""
        if self.reference_scores is None:
            return list(items)
        out = []
        for item in items:
            logprobs = self.reference_scores.take(item.trajectory)
            if logprobs is None:
                self.reference_scores.computed(length(item) - 1)
            out.append(dataclasses.replace(item, ref_logprobs=logprobs))
        return out

    def step(self, items: Sequence[TrainItem], total: float | None = None) -> dict[str, float]:
        """One optimizer step over ``items``; returns the step's training metrics.

        ``total`` is the loss normalizer of the whole batch when ``items`` is one rank's share.
        """
        start = time.perf_counter()
        if not items and total is None:
            raise ValueError("a policy step needs at least one trajectory")
        total = self.objective.normalizer(items) if total is None else total
        sums, grad_norm = self._update(lambda share: Step(self.name, share, total), self.backward, items, total)
        tokens, engine_tokens = max(sums["tokens"], 1.0), max(sums["engine_tokens"], 1.0)
        metrics = {"loss": sums["loss"], "entropy": sums["entropy"] / tokens, "parity": sums["parity"] / engine_tokens,
                   **{name: sums[name] / tokens for name in self.objective.figures},
                   "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0], "policy_tokens": sums["tokens"],
                   "forward_s": sums["forward_s"], "update_s": time.perf_counter() - start}
        self.scheduler.step()
        return metrics

    def backward(self, items: Sequence[TrainItem], total: float | None = None) -> dict[str, float]:
        """Accumulate the gradient of the batch's loss over its micro-batches; returns token-summed figures.

        The loss is normalized by ``total`` (default: ``items``' own normalizer), so the
        gradients of shares of one batch add up to the batch's.
        """
        self.model.train()
        total = self.objective.normalizer(items) if total is None else total
        sums: dict[str, float] = dict.fromkeys((*OWN, *self.objective.figures, "forward_s"), 0.0)
        for batch in self._micro_batches(items, TrainItem(FILLER, 0.0)):
            t0 = time.perf_counter()
            inputs, entropy = self._loss_inputs(batch)
            sums["forward_s"] += time.perf_counter() - t0
            terms = self.objective(inputs, total)
            terms.loss.backward()
            sums["loss"] += float(terms.loss.detach())
            for name, value in terms.sums.items():
                sums[name] += value
            sums["entropy"] += float((entropy * inputs.mask).sum())
            sums["tokens"] += float(inputs.mask.sum())
            sums["parity"] += float(((inputs.old_logprobs - inputs.behavior_logprobs).abs() * inputs.sampled).sum())
            sums["engine_tokens"] += float(inputs.sampled.sum())
        return sums

    def _scores(self, model: PreTrainedModel, trajectories: Sequence[Trajectory]) -> list[TokenScores]:
        """``sequence_logprobs`` of ``trajectories`` under ``model`` at the trainer's precision: under
        ``optim.autocast`` the forwards run in bfloat16, the weights, their gradients and AdamW's state stay as
        loaded, and the logprobs are float32."""
        bf16 = self.optim_cfg.autocast == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return sequence_logprobs(model, self.vision, [(t.token_ids, t.images) for t in trajectories])

    def _loss_inputs(self, batch: Sequence[TrainItem]) -> tuple[LossInputs, torch.Tensor]:
        """The forwards of one micro-batch, lined up on its (B, T) grid; and the policy's entropy there."""
        trajs = [it.trajectory for it in batch]
        scores = self._scores(self.model, trajs)
        logp = pad([s.logprobs for s in scores])
        device = logp.device
        mask = pad([torch.tensor(t.loss_mask[1:], dtype=torch.float32) for t in trajs]).to(device)
        sampled = pad([torch.tensor([float(v >= 0) for v in t.versions[1:]]) for t in trajs]).to(device) * mask
        if all(isinstance(it.advantage, float) for it in batch):
            advantages = torch.tensor([it.advantage for it in batch], dtype=torch.float32, device=device)
        else:
            advantages = pad([torch.as_tensor(it.advantage, dtype=torch.float32).expand(length(it) - 1)
                              for it in batch]).to(device)
        ref = None
        if self.reference is not None and self.objective.needs_reference and all(
                it.ref_logprobs is not None for it in batch):
            ref = pad([it.ref_logprobs for it in batch]).to(device)  # type: ignore[misc]
        elif self.reference is not None and self.objective.needs_reference:
            with torch.no_grad():
                ref = pad([s.logprobs for s in self._scores(self.reference, trajs)])
        inputs = LossInputs(
            logprobs=logp,
            old_logprobs=logp.detach() if batch[0].old_logprobs is None else pad([it.old_logprobs for it in batch]
                                                                                 ).to(device),
            behavior_logprobs=pad([torch.tensor(t.behavior_logprobs[1:]) for t in trajs]).to(device),
            sampled=sampled, mask=mask, advantages=advantages, ref_logprobs=ref)
        return inputs, pad([s.entropy.detach() for s in scores])

    def logprobs(self, items: Sequence[TrainItem]) -> list[torch.Tensor]:
        """The current policy's logprobs of each item's tokens: pi_old, when one rollout feeds several updates.

        With several ranks, each computes the logprobs of its share.
        """
        shares = [[items[i] for i in share] for share in self.parallel.shares([length(it) for it in items])]
        results = self.parallel.everywhere([Logprobs(self.name, share) for share in shares[1:]],
                                           lambda: self._logprobs(shares[0]))
        by_item = {id(it): lp for share, logprobs in zip(shares, results) for it, lp in zip(share, logprobs)}
        return [by_item[id(it)] for it in items]

    @torch.no_grad()
    def _logprobs(self, items: Sequence[TrainItem]) -> list[torch.Tensor]:
        self.model.eval()
        out: dict[int, torch.Tensor] = {}  # id(item) -> its logprobs (micro-batches sort the items by length)
        for batch in self._micro_batches(items, TrainItem(FILLER, 0.0)):
            scores = self._scores(self.model, [it.trajectory for it in batch])
            out |= {id(it): s.logprobs.cpu() for it, s in zip(batch, scores)}
        return [out[id(it)] for it in items]

    def weights(self) -> dict[str, torch.Tensor]:
        """The whole model's weights (LoRA merged): what the engines serve and a checkpoint keeps.

        Sharded, every rank gathers them and this rank returns them (the others' copies are dropped).
        """
        if not self.parallel.sharded:
            return {k: v.cpu() for k, v in merged_state_dict(self.model).items()}
        return self._everywhere(GatherWeights(self.name), self._gather_weights)

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state as one process would hold it (``torch.optim.Optimizer.state_dict``)."""
        if not self.parallel.sharded:
            return _on_cpu(self.optimizer.state_dict())
        return self._everywhere(GatherOptimizerState(self.name), self._gather_optimizer_state)

    def _everywhere(self, call: RankCall, mine: Callable[[], Any]) -> Any:
        """``call`` on every other rank and ``mine()`` here; this rank's result."""
        return self.parallel.everywhere([call] * (self.parallel.world_size - 1), mine)[0]

    def _gather_weights(self) -> dict[str, torch.Tensor]:
        """Every rank gathers each tensor; rank 0 keeps them, the others return {}."""
        weights = {k: whole(v).cpu() for k, v in self.model.state_dict().items()}
        return weights if self.parallel.is_first() else {}

    def _gather_optimizer_state(self) -> dict[str, Any]:
        """Every rank gathers each moment; rank 0 keeps them, the others return {}."""
        state = self.optimizer.state_dict()
        state["state"] = {i: {k: whole(v) for k, v in s.items()} for i, s in sorted(state["state"].items())}
        return _on_cpu(state) if self.parallel.is_first() else {}

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (``model.device``; on every rank its own GPU, or the CPU)."""
        return next(self.model.parameters()).device

    def imitate(self, trajectories: Sequence[Trajectory], total: float | None = None) -> dict[str, float]:
        """One supervised step: maximize the log-likelihood of the policy tokens (loss mask 1) of ``trajectories``.

        The warm start on expert (or teacher) trajectories: the same ids, images and masks
        as RL, so the model learns the format and the tool protocol before RL improves it.
        """
        if not trajectories and total is None:
            raise ValueError("a supervised step needs at least one trajectory")
        self.model.train()
        start = time.perf_counter()
        total = float(sum(sum(t.loss_mask[1:]) for t in trajectories)) if total is None else total
        sums, grad_norm = self._update(lambda share: Imitate(self.name, share, total), self._imitation_backward,
                                       trajectories, total)
        metrics = {"sft_loss": sums["loss"], "sft_token_p_over_half": sums["confident"] / max(total, 1.0),
                   "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
                   "update_s": time.perf_counter() - start}
        self.scheduler.step()
        return metrics

    def _imitation_backward(self, trajectories: Sequence[Trajectory], total: float) -> dict[str, float]:
        """Accumulate the gradient of the negative log-likelihood of the policy tokens, divided by ``total`` tokens."""
        sums = {"loss": 0.0, "confident": 0.0}
        for batch in self._micro_batches(trajectories, FILLER):
            logp = pad([s.logprobs for s in self._scores(self.model, batch)])
            mask = pad([torch.tensor(t.loss_mask[1:], dtype=torch.float32) for t in batch]).to(logp.device)
            loss = (-logp * mask).sum() / total
            loss.backward()
            sums["loss"] += float(loss.detach())
            sums["confident"] += float(((logp.detach() > math.log(0.5)) * mask).sum())
        return sums

    def _update(self, call: Callable[[list[Any]], RankCall], backward: Callable[[Sequence[Any], float],
                dict[str, float]], items: Sequence[Any], total: float) -> tuple[dict[str, float], float]:
        """``backward`` on this rank's share of ``items`` (``call`` of their shares starts the other ranks on
        theirs), the gradients and figures summed over the ranks, then the optimizer step; returns the summed
        figures and the grad norm."""
        shares = [[items[i] for i in share] for share in self.parallel.shares([length(it) for it in items])]
        sums: dict[str, float] = {}

        def mine() -> float:
            sums.update(backward(shares[0], total))
            self.parallel.reduce(self.model, sums, self.device)  # where the other ranks meet this one
            return self._apply()

        grad_norm = self.parallel.everywhere([call(share) for share in shares[1:]], mine)[0]
        return sums, grad_norm

    def _micro_batches(self, items: Sequence[Any], filler: Any) -> list[list[Any]]:
        """``micro_batches`` of ``items``, padded with ``[filler]`` as the parallel strategy needs."""
        return self.parallel.pad_batches(micro_batches(items, self.optim_cfg.micro_batch_tokens), filler,
                                         self.device)

    def _apply(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        limit = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        grad_norm = self.parallel.clip(params, limit, self.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm


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


def _on_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict with its tensors on the CPU: what a checkpoint keeps, wherever the trainer ran."""
    return {**state, "state": {i: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                               for i, s in state["state"].items()}}
