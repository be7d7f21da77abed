"""The policy update: trajectories with advantages --> one optimizer step.

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

Data parallel (``vlrl.distributed.ranks``): with ``peers``, a step cuts its batch into one
share per rank by tokens, starts the other ranks on theirs and runs its own; every rank
normalizes by the whole batch, and with a process ``group`` the gradients and the summed
figures are all-reduced before the (identical) optimizer step, so the ranks' weights stay
equal and equal to a single process's, up to the order of the float sums.

Fully sharded (``shard``, FSDP2): each rank keeps a slice of the language model's
weights, gradients and AdamW moments; a layer's weights are gathered for its forward and
backward and its gradient is reduce-scattered (summed, as the loss is already normalized
by the whole batch). The vision tower stays whole on every rank, its gradient all-reduced:
a rank whose micro-batch has no image never calls it, and a sharded module must be called
by every rank alike. For the same reason every rank runs as many micro-batches as the
busiest one (``FILLER``), and what reads the whole model (``weights``,
``optimizer_state``, ``logprobs``) runs on every rank at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, TypeVar

import torch
from transformers import PreTrainedModel

from vlrl.algos.grpo import aggregate, clipped_policy_loss, kl_penalty, off_policy_weights
from vlrl.config import LossConfig, OptimConfig
from vlrl.trainer.logprobs import sequence_logprobs
from vlrl.trainer.lora import apply_lora, merged_state_dict
from vlrl.types import Aggregation, Segment, Trajectory
from vlrl.vision import VisionInputs

T = TypeVar("T")

SUMS = ("loss", "clipped", "ratio", "entropy", "kl", "parity", "weight", "tokens", "engine_tokens")  # all-reduced


class Peers(Protocol):
    """The other data-parallel ranks, as the rank that drives them sees them (``vlrl.distributed.ranks``)."""

    world_size: int

    def submit(self, trainer: str, method: str, args: Sequence[tuple[Any, ...]]) -> Any:
        """Start ``method`` of trainer ``trainer`` on ranks 1.. with ``args[k - 1]`` on rank k; returns what
        ``wait`` takes."""

    def wait(self, pending: Any) -> list[Any]:
        """The ranks' results, in rank order; raises if one of them is lost."""

    def failed(self, pending: Any, error: BaseException) -> None:
        """This rank's part failed with ``error``: raise the loss of a rank if that is the cause."""

    def open(self, trainer: str, optim: OptimConfig, loss: LossConfig, total_steps: int) -> None:
        """Give every rank a trainer named ``trainer`` of the same model with an optimizer of its own."""

    def reset_reference(self) -> None:
        """Copy each rank's model into its reference model."""


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
                 total_steps: int, reference: PreTrainedModel | None = None, group: Any = None,
                 peers: Peers | None = None, name: str = "policy"):
        if loss.kl_coef > 0 and reference is None:
            raise ValueError("loss.kl_coef > 0 needs a reference model")
        self.model, self.vision, self.optim_cfg, self.loss_cfg = model, vision, optim, loss
        self.reference = reference
        self.group, self.peers, self.name = group, peers, name  # data parallel: see the module docstring
        if optim.lora_rank > 0:
            model = apply_lora(model, optim.lora_rank, optim.lora_alpha, optim.lora_dropout)
            self.model = model
        if optim.freeze_vision:
            vision_tower(model).requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                                           weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(optim, total_steps))
        self.total_steps = total_steps
        self.version = 0  # of the weights: 0 as loaded, + 1 at each push to the engines (vlrl.recipes.train)
        self.sharded = False

    def shard(self) -> None:
        """Shard the model, the reference model and the optimizer state over the process group (FSDP2).

        Every rank holds the same whole model and optimizer when it calls this (no message is
        sent); afterwards each keeps its slice. LoRA adapters are not sharded.
        """
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self.group is None:
            raise ValueError("sharding needs a process group (distributed.world_size > 1)")
        if self.optim_cfg.lora_rank > 0:
            raise ValueError("LoRA adapters are not sharded: use distributed.strategy dp with optim.lora_rank > 0")
        mesh = init_device_mesh(self.device.type, (torch.distributed.get_world_size(self.group),))
        full = self.optimizer.state_dict()
        for model in (self.model, self.reference):
            if model is None:
                continue
            for layer in language_layers(model):
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh, ignored_params=set(vision_tower(model).parameters()))
            for unit in (*language_layers(model), model):
                unit.set_gradient_divide_factor(1.0)  # a sum: every rank's loss is already divided by the whole batch
                unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-scaled sum
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.optim_cfg.lr)
        schedule = self.scheduler.state_dict()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(self.optim_cfg, self.total_steps))
        self.scheduler.load_state_dict(schedule)
        for index, state in full["state"].items():
            full["state"][index] = {k: _like(v, params[index]) for k, v in state.items()}
        self.optimizer.load_state_dict(full)  # last: the schedule's construction set the LR of its step 0
        self.sharded = True

    def sibling(self, optim: OptimConfig, loss: LossConfig, total_steps: int, name: str) -> PolicyTrainer:
        """A trainer of the same model with an optimizer of its own (the warm start's), on every rank."""
        if self.peers is not None:
            self.peers.open(name, optim, loss, total_steps)
        sibling = PolicyTrainer(self.model, self.vision, optim, loss, total_steps, group=self.group, peers=self.peers,
                                name=name)
        sibling.sharded = self.sharded
        return sibling

    def reset_reference(self) -> None:
        """The reference model (KL) becomes a copy of the model as it is now, on every rank."""
        if self.reference is None:
            raise ValueError("this trainer has no reference model (loss.kl_coef is 0)")
        self.reference.load_state_dict(self.model.state_dict() if self.sharded else merged_state_dict(self.model))
        if self.peers is not None:
            self.peers.reset_reference()

    def step(self, items: Sequence[TrainItem], total: float | None = None) -> dict[str, float]:
        """One optimizer step over ``items``; returns the step's training metrics.

        ``total`` is the loss normalizer of the whole batch when ``items`` is one rank's share.
        """
        start = time.perf_counter()
        if not items and total is None:
            raise ValueError("a policy step needs at least one trajectory")
        total = normalizer(items, self.loss_cfg.aggregation) if total is None else total
        sums, grad_norm = self._update("step", self.backward, items, total)
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

    def backward(self, items: Sequence[TrainItem], total: float | None = None) -> dict[str, float]:
        """Accumulate the gradient of the batch's loss over its micro-batches; returns token-summed figures.

        The loss is normalized by ``total`` (default: ``items``' own normalizer), so the
        gradients of shares of one batch add up to the batch's.
        """
        cfg = self.loss_cfg
        self.model.train()
        total = normalizer(items, cfg.aggregation) if total is None else total
        sums: dict[str, float] = dict.fromkeys((*SUMS, "forward_s"), 0.0)
        for batch in self._micro_batches(items, TrainItem(FILLER, 0.0)):
            trajs = [it.trajectory for it in batch]
            t0 = time.perf_counter()
            scores = sequence_logprobs(self.model, self.vision, [(t.token_ids, t.images) for t in trajs])
            sums["forward_s"] += time.perf_counter() - t0
            logp = pad([s.logprobs for s in scores])
            device = logp.device
            mask = pad([torch.tensor(t.loss_mask[1:], dtype=torch.float32) for t in trajs]).to(device)
            behavior = pad([torch.tensor(t.behavior_logprobs[1:]) for t in trajs]).to(device)
            sampled = pad([torch.tensor([float(v >= 0) for v in t.versions[1:]]) for t in trajs]).to(device) * mask
            old = logp.detach() if batch[0].old_logprobs is None else pad([it.old_logprobs for it in batch]).to(device)
            weights = off_policy_weights(old, behavior, cfg.importance_cap) * sampled + (1 - sampled) \
                if cfg.importance_cap else None
            if all(isinstance(it.advantage, float) for it in batch):
                advantages = torch.tensor([it.advantage for it in batch], dtype=torch.float32, device=device)
            else:
                advantages = pad([torch.as_tensor(it.advantage, dtype=torch.float32).expand(len(it.trajectory.token_ids)
                                                                                           - 1) for it in batch])
                advantages = advantages.to(device)
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

    def logprobs(self, items: Sequence[TrainItem]) -> list[torch.Tensor]:
        """The current policy's logprobs of each item's tokens: pi_old, when one rollout feeds several updates.

        With several ranks, each computes the logprobs of its share.
        """
        if self.peers is None:
            return self._logprobs(items)
        shares = split_by_tokens(range(len(items)), [len(it.trajectory.token_ids) for it in items],
                                 self.peers.world_size)
        results = self._everywhere("logprobs", self._logprobs, [([items[i] for i in share],) for share in shares])
        out: list[torch.Tensor] = [torch.empty(0)] * len(items)
        for share, logprobs in zip(shares, results):
            for i, lp in zip(share, logprobs):
                out[i] = lp
        return out

    @torch.no_grad()
    def _logprobs(self, items: Sequence[TrainItem]) -> list[torch.Tensor]:
        self.model.eval()
        out: list[torch.Tensor] = []
        for batch in self._micro_batches(items, TrainItem(FILLER, 0.0)):
            out += [s.logprobs.cpu() for s in sequence_logprobs(self.model, self.vision,
                                                                [(it.trajectory.token_ids, it.trajectory.images)
                                                                 for it in batch])]
        return out[:len(items)]

    def weights(self) -> dict[str, torch.Tensor]:
        """The whole model's weights (LoRA merged): what the engines serve and a checkpoint keeps.

        Sharded, every rank gathers them and this rank returns them (the others' copies are dropped).
        """
        if not self.sharded:
            return {k: v.cpu() for k, v in merged_state_dict(self.model).items()}
        return self._everywhere("weights", self._gather_weights, [()] * self._world())[0]

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state as one process would hold it (``torch.optim.Optimizer.state_dict``)."""
        if not self.sharded:
            return _on_cpu(self.optimizer.state_dict())
        return self._everywhere("optimizer_state", self._gather_optimizer_state, [()] * self._world())[0]

    def _gather_weights(self) -> dict[str, torch.Tensor]:
        """Every rank gathers each tensor; rank 0 keeps them, the others return {}."""
        weights = {k: _whole(v).cpu() for k, v in self.model.state_dict().items()}
        return weights if torch.distributed.get_rank(self.group) == 0 else {}

    def _gather_optimizer_state(self) -> dict[str, Any]:
        """Every rank gathers each moment; rank 0 keeps them, the others return {}."""
        state = self.optimizer.state_dict()
        state["state"] = {i: {k: _whole(v) for k, v in s.items()} for i, s in sorted(state["state"].items())}
        return _on_cpu(state) if torch.distributed.get_rank(self.group) == 0 else {}

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
        sums, grad_norm = self._update("imitate", self._imitation_backward, trajectories, total)
        metrics = {"sft_loss": sums["loss"], "sft_token_p_over_half": sums["confident"] / max(total, 1.0),
                   "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
                   "update_s": time.perf_counter() - start}
        self.scheduler.step()
        return metrics

    def _imitation_backward(self, trajectories: Sequence[Trajectory], total: float) -> dict[str, float]:
        """Accumulate the gradient of the mean negative log-likelihood (over ``total`` tokens) of the policy tokens."""
        sums = {"loss": 0.0, "confident": 0.0}
        for batch in self._micro_batches(trajectories, FILLER):
            scores = sequence_logprobs(self.model, self.vision, [(t.token_ids, t.images) for t in batch])
            logp = pad([s.logprobs for s in scores])
            mask = pad([torch.tensor(t.loss_mask[1:], dtype=torch.float32) for t in batch]).to(logp.device)
            loss = aggregate(-logp, mask, "token-mean", total)
            loss.backward()
            sums["loss"] += float(loss.detach())
            sums["confident"] += float(((logp.detach() > math.log(0.5)) * mask).sum())
        return sums

    def _update(self, method: str, backward: Callable[[Sequence[Any], float], dict[str, float]],
                items: Sequence[Any], total: float) -> tuple[dict[str, float], float]:
        """``backward`` on this rank's share of ``items`` (the other ranks start ``method`` on theirs), the gradients
        and figures summed over the ranks, then the optimizer step; returns the summed figures and the grad norm."""
        if self.peers is None:  # one process, or a remote rank (which has the group, not the peers)
            sums = backward(items, total)
            self._reduce(sums)
            return sums, self._apply()
        shares = split_by_tokens(items, [len(getattr(it, "trajectory", it).token_ids) for it in items],
                                 self.peers.world_size)
        sums: dict[str, float] = {}

        def mine(share: Sequence[Any], total: float) -> float:
            sums.update(backward(share, total))
            self._reduce(sums)  # where the other ranks meet this one
            return self._apply()

        grad_norm = self._everywhere(method, mine, [(share, total) for share in shares])[0]
        return sums, grad_norm

    def _everywhere(self, method: str, mine: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``method`` of this trainer on ranks 1.. with ``args[k]`` on rank k, and ``mine(*args[0])`` here, at
        once; returns every rank's result in rank order."""
        if self.peers is None:
            return [mine(*args[0])]
        pending = self.peers.submit(self.name, method, args[1:])
        try:
            result = mine(*args[0])
        except Exception as e:
            self.peers.failed(pending, e)
            raise
        return [result, *self.peers.wait(pending)]

    def _world(self) -> int:
        return 1 if self.peers is None else self.peers.world_size

    def _micro_batches(self, items: Sequence[Any], filler: Any) -> list[list[Any]]:
        """``micro_batches`` of ``items``; sharded, padded with ``[filler]`` to the most any rank has, as every
        rank must run each sharded forward and backward."""
        batches = micro_batches(items, self.optim_cfg.micro_batch_tokens)
        if not self.sharded:
            return batches
        import torch.distributed as dist

        most = torch.tensor([len(batches)], device=self.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.group)
        return batches + [[filler]] * (int(most) - len(batches))

    def _reduce(self, sums: dict[str, float]) -> None:
        """Sum the gradients and the additive figures over the process group (no-op without one)."""
        if self.group is None:
            return
        import torch.distributed as dist

        params = [p for p in self.model.parameters() if p.requires_grad and not _is_sharded(p)]  # FSDP reduced those
        for p in params:
            if p.grad is None:  # unused by this rank's share: it adds nothing, but the shapes must line up
                p.grad = torch.zeros_like(p)
        if params:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, group=self.group)
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
        keys = [k for k in sums if k != "forward_s"]
        figures = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(figures, group=self.group)
        sums.update(zip(keys, figures.tolist()))

    def _apply(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        limit = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        grad_norm = self._clip(params, limit) if self.sharded else float(torch.nn.utils.clip_grad_norm_(params, limit))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _clip(self, params: Sequence[torch.Tensor], limit: float) -> float:
        """``clip_grad_norm_`` over whole and sharded gradients: the squares of the slices summed over the ranks."""
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        sliced = torch.stack([torch.linalg.vector_norm(g.to_local()) ** 2 for g in grads if _is_sharded(g)]).sum()
        dist.all_reduce(sliced, group=self.group)
        whole = sum((torch.linalg.vector_norm(g) ** 2 for g in grads if not _is_sharded(g)),
                    torch.tensor(0.0, device=self.device))
        norm = float((sliced + whole).sqrt())
        scale = min(1.0, limit / (norm + 1e-6))
        if scale < 1.0:
            for g in grads:
                g.mul_(scale)
        return norm


def normalizer(items: Sequence[TrainItem], aggregation: Aggregation) -> float:
    """What the batch's loss is divided by: its policy tokens (token-mean) or its trajectories."""
    if aggregation == "token-mean":
        return float(sum(sum(it.trajectory.loss_mask[1:]) for it in items))
    return float(len(items))


def split_by_tokens(items: Sequence[T], lengths: Sequence[int], ranks: int) -> list[list[T]]:
    """``items`` (of ``lengths`` tokens) dealt to ``ranks`` shares of near-equal tokens: longest first, each to the
    lightest share.

    Each share keeps the batch's order, so micro-batching within a share is as in one process.
    """
    loads = [0] * ranks
    owner: dict[int, int] = {}
    for i in sorted(range(len(items)), key=lambda i: -lengths[i]):
        rank = loads.index(min(loads))
        owner[i] = rank
        loads[rank] += lengths[i]
    return [[items[i] for i in range(len(items)) if owner[i] == rank] for rank in range(ranks)]


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
    return _inner(model, "visual", "vision tower")


def language_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The decoder layers of the language model inside ``model``: the units FSDP gathers one at a time."""
    return _inner(model, "language_model", "language model").layers


def _inner(model: PreTrainedModel, name: str, what: str) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    part = getattr(getattr(base, "model", base), name, None)
    if part is None:
        raise ValueError(f"{type(model).__name__} has no {what} at .model.{name}")
    return part


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _whole(value: Any) -> Any:
    """A sharded tensor gathered whole (every rank must call this alike); anything else as it is."""
    return value.full_tensor() if _is_sharded(value) else value


def _on_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict with its tensors on the CPU: what a checkpoint keeps, wherever the trainer ran."""
    return {**state, "state": {i: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                               for i, s in state["state"].items()}}


def _like(value: Any, param: torch.Tensor) -> Any:
    """An optimizer state tensor of a whole parameter, cut like ``param``'s slice on this rank."""
    from torch.distributed.tensor import distribute_tensor

    if not _is_sharded(param) or not isinstance(value, torch.Tensor) or value.shape != param.shape:
        return value
    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


# a micro-batch of a rank that has run out of its share (sharded): two prompt tokens, nothing to learn
FILLER = Trajectory("filler", "filler", [Segment("prompt", (0, 0))])


def pad(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right-pad 1-D tensors with zeros into one (B, T) tensor."""
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
