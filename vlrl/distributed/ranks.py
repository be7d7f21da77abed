"""Data-parallel trainer ranks: rank 0 is the driver's ``PolicyTrainer``, ranks 1..W-1 are Ray actors.

The remote ranks are placed by a Ray placement group (one bundle of
``distributed.rank_resources`` each) and every rank joins one torch.distributed process
group (gloo: the trainer runs on CPU) that rendezvouses at the driver. A remote rank
starts as a copy of rank 0: the same model folder, then rank 0's weights, optimizer and
LR-schedule state and reference model, so a resumed run, or LoRA's random init, starts
equal everywhere. Each step, rank 0 deals the batch out by tokens (``PolicyTrainer``);
the gradients are all-reduced, so every rank takes the same optimizer step. Rank 0 pushes
the weights to the engines, saves the checkpoints and runs an algorithm's own models (PPO's
critic). Rank 0 calls a remote rank's trainer with a typed ``RankCall``
(``vlrl.trainer.parallel``), never by a method's name.

With ``distributed.strategy: fsdp`` every rank then shards its copy (``PolicyTrainer.shard``)
and keeps a slice of the language model and of its optimizer state; the weights rank 0
pushes and checkpoints are gathered from all ranks.

A rank that dies ends the step with ``TrainerRankLost``, naming it; `vlrl train` then
resumes the run from its last checkpoint (``distributed.max_restarts`` times).
"""

from __future__ import annotations

import asyncio
import copy
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import ray
import torch
import torch.distributed as dist
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch.distributed.tensor import DTensor
from transformers import AutoModelForImageTextToText

from vlrl.allocator import keep_freed_memory
from vlrl.config import DistributedConfig, OptimConfig
from vlrl.distributed import TrainerRankLost
from vlrl.distributed.cluster import actor_options, placed
from vlrl.trainer.lora import merged_state_dict
from vlrl.trainer.objective import Objective
from vlrl.trainer.parallel import Collective, Local, RankCall
from vlrl.trainer.policy import PolicyTrainer
from vlrl.vision import VisionInputs


@dataclass(frozen=True)
class RankSpec:
    """How to build a rank's trainer: what rank 0's was built from."""

    model_dir: str
    dtype: torch.dtype
    optim: OptimConfig
    objective: Objective
    total_steps: int
    timeout_s: float  # a collective that waits longer than this fails
    shard: bool  # distributed.strategy fsdp
    device: str  # cuda (the GPU Ray gave the rank) or cpu
    pixels: tuple[int, int]  # rank 0's image bounds (min, max), which model.min_pixels / max_pixels may have set


class TrainerRank:
    """The actor class of ranks 1..W-1; ``ray.remote(TrainerRank)`` makes it one."""

    def __init__(self, rank: int, world_size: int, init_method: str, spec: RankSpec, state: dict[str, Any]):
        keep_freed_memory()  # a process of its own (vlrl/allocator.py)
        dist.init_process_group(_backend(spec.device), init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=spec.timeout_s))
        model = AutoModelForImageTextToText.from_pretrained(spec.model_dir, dtype=spec.dtype).to(spec.device)
        reference = copy.deepcopy(model).eval().requires_grad_(False) if state["reference"] is not None else None
        trainer = PolicyTrainer(model, VisionInputs(spec.model_dir, *spec.pixels), spec.optim, spec.objective, spec.total_steps,
                                reference, Collective(dist.group.WORLD))
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        if reference is not None:
            reference.load_state_dict(state["reference"])
        if spec.shard:
            trainer.shard()
        self.trainers = {trainer.name: trainer}

    def pid(self) -> int:
        return os.getpid()

    def run(self, call: RankCall) -> Any:
        """This rank's part of ``call`` (a step or a supervised step on its share, the logprobs of its share, its
        part of gathering the weights or the optimizer state); returns what the trainer's method returns."""
        return call.apply(self.trainers[call.trainer])

    def open(self, name: str, optim: OptimConfig, total_steps: int) -> None:
        self.trainers[name] = self.trainers["policy"].sibling(optim, total_steps, name)

    def reset_reference(self) -> None:
        self.trainers["policy"].reset_reference()

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's weights as this rank holds them (LoRA merged; sharded: its slices), to check that the ranks
        agree."""
        model = self.trainers["policy"].model
        return {k: (v.to_local() if isinstance(v, DTensor) else v).clone() for k, v in merged_state_dict(model).items()}


_Actor = ray.remote(TrainerRank)


class RemoteRanks:
    """Ranks 1..W-1 as rank 0 drives them (the ``Peers`` of ``vlrl.trainer.parallel``)."""

    def __init__(self, actors: list[Any], pids: list[int], group: Any):
        self.actors, self.pids, self._placement = actors, pids, group
        self.world_size = len(actors) + 1

    @classmethod
    async def start(cls, trainer: PolicyTrainer, model_dir: str | Path, cfg: DistributedConfig,
                    compute: Any) -> RemoteRanks:
        """Place ranks 1..W-1, build them like ``trainer`` (loaded from ``model_dir``) and from its state, and join
        them in one process group with it.

        ``compute`` is the thread rank 0 trains on: it joins the group there, so the event
        loop is never blocked by the rendezvous.
        """
        remote = cfg.world_size - 1
        spec = RankSpec(str(model_dir), trainer.model.dtype, trainer.optim_cfg, trainer.objective, trainer.total_steps,
                        cfg.collective_timeout_s, cfg.strategy == "fsdp", trainer.device.type,
                        (trainer.vision.min_pixels, trainer.vision.max_pixels))
        group = placement_group([dict(cfg.rank_resources)] * remote)
        actors: list[Any] = []
        try:
            await placed("trainer ranks", group.ready(), cfg.rank_resources, remote, cfg.placement_timeout_s)
            init_method = f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"
            state = ray.put({"model": _cpu_state(trainer.model), "optimizer": trainer.optimizer_state(),
                             "scheduler": trainer.scheduler.state_dict(),
                             "reference": None if trainer.reference is None else _cpu_state(trainer.reference)})
            options = actor_options(cfg.rank_resources) | {"max_restarts": 0}
            actors = [_Actor.options(**options, scheduling_strategy=PlacementGroupSchedulingStrategy(group, k))
                      .remote(k + 1, cfg.world_size, init_method, spec, state) for k in range(remote)]
            await compute.run(dist.init_process_group, _backend(spec.device), init_method=init_method, rank=0,
                              world_size=cfg.world_size, timeout=timedelta(seconds=spec.timeout_s))
            parallel = trainer.parallel = Collective(dist.group.WORLD)
            if spec.shard:
                await compute.run(trainer.shard)
            pids = list(await placed("trainer ranks", asyncio.gather(*(a.pid.remote() for a in actors)),
                                     cfg.rank_resources, remote, cfg.placement_timeout_s))
        except BaseException:
            for actor in actors:
                ray.kill(actor)
            remove_placement_group(group)
            if dist.is_initialized():
                dist.destroy_process_group()
            trainer.parallel = Local()
            raise
        ranks = cls(actors, pids, group)
        parallel.peers = ranks
        return ranks

    def submit(self, calls: Sequence[RankCall]) -> list[Any]:
        return [actor.run.remote(call) for actor, call in zip(self.actors, calls)]

    def wait(self, pending: list[Any]) -> list[Any]:
        return self._get(pending)

    def failed(self, pending: list[Any], error: BaseException) -> None:
        """Rank 0's part failed with ``error``: raise TrainerRankLost if a remote rank is gone (the likely cause)."""
        ray.wait(pending, num_returns=len(pending), timeout=10)
        lost = self._lost(error)
        if lost is not None:
            raise lost from error

    def open(self, trainer: str, optim: OptimConfig, total_steps: int) -> None:
        self._get([actor.open.remote(trainer, optim, total_steps) for actor in self.actors])

    def reset_reference(self) -> None:
        self._get([actor.reset_reference.remote() for actor in self.actors])

    def weights(self) -> list[dict[str, torch.Tensor]]:
        """Each remote rank's weights, in rank order."""
        return self._get([actor.weights.remote() for actor in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        remove_placement_group(self._placement)
        if dist.is_initialized():
            dist.destroy_process_group()

    def _get(self, refs: list[Any]) -> Any:
        try:
            return ray.get(refs)
        except RayActorError as e:
            raise self._lost(e) or TrainerRankLost(f"a trainer rank died: {e}") from e

    def _lost(self, error: BaseException) -> TrainerRankLost | None:
        """The loss of the first remote rank that no longer answers, or None if all do."""
        rank = next((r for r, actor in enumerate(self.actors, start=1) if not _alive(actor)), None)
        if rank is None:
            return None
        return TrainerRankLost(f"trainer rank {rank} (pid {self.pids[rank - 1]}) died during the step "
                               f"({type(error).__name__}: {error})")


def _backend(device: str) -> str:
    """The collectives' library: NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device == "cuda" else "gloo"


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in model.state_dict().items()}


def _alive(actor: Any) -> bool:
    try:
        ray.get(actor.pid.remote(), timeout=10)
    except (RayActorError, GetTimeoutError):
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
