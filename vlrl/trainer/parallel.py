"""How one trainer's work is spread over ranks: ``Local`` (one process, the default) or ``Collective`` (a
torch.distributed process group, data parallel or fully sharded).

Data parallel: with ``peers`` (the other ranks, as rank 0 drives them: ``vlrl.distributed.ranks``)
a step cuts its batch into one share per rank by tokens, starts the other ranks on theirs
with a typed ``RankCall`` and runs its own; every rank normalizes by the whole batch, and
the gradients and the summed figures are all-reduced before the (identical) optimizer step,
so the ranks' weights stay equal and equal to a single process's, up to the order of the
float sums. A remote rank holds a ``Collective`` with the group and no peers.

Fully sharded (``shard``, FSDP2): each rank keeps a slice of the language model's weights,
gradients and AdamW moments; a layer's weights are gathered for its forward and backward
and its gradient is reduce-scattered (summed, as the loss is already normalized by the
whole batch). The vision tower stays whole on every rank, its gradient all-reduced: a rank
whose micro-batch has no image never calls it, and a sharded module must be called by
every rank alike. For the same reason every rank runs as many micro-batches as the busiest
one (``pad_batches``), and what reads the whole model (weights, optimizer state, logprobs)
runs on every rank at once (``everywhere``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, TypeVar

import torch

from vlrl.config import OptimConfig
from vlrl.trainer.batches import TrainItem, split_by_tokens
from vlrl.types import Trajectory

if TYPE_CHECKING:
    from vlrl.trainer.policy import PolicyTrainer

T = TypeVar("T")


# ------------------------------------------------------------------ typed calls to the remote ranks


@dataclass(frozen=True)
class RankCall:
    """A remote rank's part of a trainer's call: ``apply`` runs it on that rank's trainer named ``trainer``."""

    trainer: str

    def apply(self, trainer: PolicyTrainer) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Step(RankCall):
    """The rank's share of an RL step, normalized by the whole batch's ``total``."""

    items: Sequence[TrainItem]
    total: float

    def apply(self, trainer: PolicyTrainer) -> dict[str, float]:
        return trainer.step(self.items, self.total)


@dataclass(frozen=True)
class Imitate(RankCall):
    """The rank's share of a supervised step, normalized by the whole batch's ``total``."""

    trajectories: Sequence[Trajectory]
    total: float

    def apply(self, trainer: PolicyTrainer) -> dict[str, float]:
        return trainer.imitate(self.trajectories, self.total)


@dataclass(frozen=True)
class Logprobs(RankCall):
    """The current policy's logprobs of the rank's share."""

    items: Sequence[TrainItem]

    def apply(self, trainer: PolicyTrainer) -> list[torch.Tensor]:
        return trainer.logprobs(self.items)


@dataclass(frozen=True)
class GatherWeights(RankCall):
    """The rank's part of gathering the sharded weights (it returns {})."""

    def apply(self, trainer: PolicyTrainer) -> dict[str, torch.Tensor]:
        return trainer.weights()


@dataclass(frozen=True)
class GatherOptimizerState(RankCall):
    """The rank's part of gathering the sharded optimizer state (it returns {})."""

    def apply(self, trainer: PolicyTrainer) -> dict[str, Any]:
        return trainer.optimizer_state()


class Peers(Protocol):
    """The other data-parallel ranks, as the rank that drives them sees them (``vlrl.distributed.ranks``)."""

    world_size: int

    def submit(self, calls: Sequence[RankCall]) -> Any:
        """Start ``calls[k - 1]`` on rank k; returns what ``wait`` takes."""

    def wait(self, pending: Any) -> list[Any]:
        """The ranks' results, in rank order; raises if one of them is lost."""

    def failed(self, pending: Any, error: BaseException) -> None:
        """This rank's part failed with ``error``: raise the loss of a rank if that is the cause."""

    def open(self, trainer: str, optim: OptimConfig, total_steps: int) -> None:
        """Give every rank a trainer named ``trainer`` of the same model with an optimizer of its own."""

    def reset_reference(self) -> None:
        """Copy each rank's model into its reference model."""


# ------------------------------------------------------------------ strategies


class Local:
    """One process: the share is the whole batch, and nothing is reduced, padded or gathered."""

    world_size = 1
    sharded = False
    group: Any = None

    def shares(self, lengths: Sequence[int]) -> list[list[int]]:
        """The positions of the items (of ``lengths`` tokens) each rank takes: this rank's first, then rank k's at
        k."""
        return [list(range(len(lengths)))]

    def everywhere(self, calls: Sequence[RankCall], mine: Callable[[], T]) -> list[Any]:
        """``calls[k - 1]`` on rank k and ``mine()`` here, at once; every rank's result in rank order."""
        return [mine()]

    def pad_batches(self, batches: list[list[T]], filler: T, device: torch.device) -> list[list[T]]:
        """``batches``, padded with ``[filler]`` to as many as the busiest rank runs when the model is sharded."""
        return batches

    def reduce(self, model: torch.nn.Module, sums: dict[str, float], device: torch.device) -> None:
        """Sum the gradients and the additive figures over the ranks."""

    def clip(self, params: Sequence[torch.Tensor], limit: float, device: torch.device) -> float:
        """Clip the gradients' global norm to ``limit``; returns the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, limit))

    def is_first(self) -> bool:
        """Whether this is rank 0 (the rank that keeps what is gathered)."""
        return True

    def open(self, trainer: str, optim: OptimConfig, total_steps: int) -> None:
        """A sibling trainer of that name on the other ranks."""

    def reset_reference(self) -> None:
        """The other ranks copy their model into their reference model."""


class Collective(Local):
    """Ranks in the torch.distributed process ``group``; rank 0 also holds the ``peers`` it drives."""

    def __init__(self, group: Any, peers: Peers | None = None):
        self.group, self.peers = group, peers  # rank 0 sets the peers once the other ranks have joined
        self.sharded = False  # set by PolicyTrainer.shard

    @property
    def world_size(self) -> int:  # type: ignore[override]
        """The ranks this one deals shares to: all of them on rank 0, itself alone on a remote rank."""
        return 1 if self.peers is None else self.peers.world_size

    def shares(self, lengths: Sequence[int]) -> list[list[int]]:
        return split_by_tokens(range(len(lengths)), lengths, self.world_size)

    def everywhere(self, calls: Sequence[RankCall], mine: Callable[[], T]) -> list[Any]:
        if self.peers is None:  # a remote rank runs its own part only
            return [mine()]
        pending = self.peers.submit(calls)
        try:
            result = mine()
        except Exception as e:
            self.peers.failed(pending, e)
            raise
        return [result, *self.peers.wait(pending)]

    def pad_batches(self, batches: list[list[T]], filler: T, device: torch.device) -> list[list[T]]:
        if not self.sharded:
            return batches
        import torch.distributed as dist

        most = torch.tensor([len(batches)], device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.group)
        return batches + [[filler]] * (int(most) - len(batches))

    def reduce(self, model: torch.nn.Module, sums: dict[str, float], device: torch.device) -> None:
        import torch.distributed as dist

        params = [p for p in model.parameters() if p.requires_grad and not is_sharded(p)]  # FSDP reduced those
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
        figures = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(figures, group=self.group)
        sums.update(zip(keys, figures.tolist()))

    def clip(self, params: Sequence[torch.Tensor], limit: float, device: torch.device) -> float:
        """``clip_grad_norm_`` over whole and sharded gradients: the squares of the slices summed over the ranks."""
        if not self.sharded:
            return super().clip(params, limit, device)
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        sliced = torch.stack([torch.linalg.vector_norm(g.to_local()) ** 2 for g in grads if is_sharded(g)]).sum()
        dist.all_reduce(sliced, group=self.group)
        whole_norm = sum((torch.linalg.vector_norm(g) ** 2 for g in grads if not is_sharded(g)),
                         torch.tensor(0.0, device=device))
        norm = float((sliced + whole_norm).sqrt())
        scale = min(1.0, limit / (norm + 1e-6))
        if scale < 1.0:
            for g in grads:
                g.mul_(scale)
        return norm

    def is_first(self) -> bool:
        return torch.distributed.get_rank(self.group) == 0

    def open(self, trainer: str, optim: OptimConfig, total_steps: int) -> None:
        if self.peers is not None:
            self.peers.open(trainer, optim, total_steps)

    def reset_reference(self) -> None:
        if self.peers is not None:
            self.peers.reset_reference()


# ------------------------------------------------------------------ fully sharded models (FSDP2)


def shard_model(model: torch.nn.Module, group: Any, device: torch.device) -> None:
    """Shard ``model``'s language-model layers and root over ``group`` (the vision tower left whole)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(group),))
    for layer in language_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params=set(vision_tower(model).parameters()))
    for unit in (*language_layers(model), model):
        unit.set_gradient_divide_factor(1.0)  # a sum: every rank's loss is already divided by the whole batch
        unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-scaled sum


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The Qwen2-VL / Qwen2.5-VL vision encoder inside ``model`` (or inside its LoRA wrapper)."""
    return _inner(model, "visual", "vision tower")


def language_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of the language model inside ``model``: the units FSDP gathers one at a time."""
    return _inner(model, "language_model", "language model").layers


def _inner(model: torch.nn.Module, name: str, what: str) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    part = getattr(getattr(base, "model", base), name, None)
    if part is None:
        raise ValueError(f"{type(model).__name__} has no {what} at .model.{name}")
    return part


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def whole(value: Any) -> Any:
    """A sharded tensor gathered whole (every rank must call this alike); anything else as it is."""
    return value.full_tensor() if is_sharded(value) else value


def like(value: Any, param: torch.Tensor) -> Any:
    """An optimizer state tensor of a whole parameter, cut like ``param``'s slice on this rank."""
    from torch.distributed.tensor import distribute_tensor

    if not is_sharded(param) or not isinstance(value, torch.Tensor) or value.shape != param.shape:
        return value
    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
