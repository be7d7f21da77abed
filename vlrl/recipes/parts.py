"""Building a training run: every check before any work, then what the run holds while it runs."""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from vlrl.algos.units import Algorithm, Setting, make_algorithm
from vlrl.config import TrainConfig, to_dict
from vlrl.distributed import open_engine
from vlrl.engines.base import Engine, check_model_dir
from vlrl.engines.hf import HFEngine
from vlrl.eval.judges import open_model_verifier, open_reward_judge
from vlrl.recipes.checkpoint import RunState, adopt_reference, load_checkpoint
from vlrl.recipes.summary import heldout_samples
from vlrl.registry import resolve
from vlrl.rewards.judge import AnswerJudge
from vlrl.rewards.verifier import Verifier
from vlrl.rollout.manager import Reward, RolloutManager
from vlrl.rollout.scheduler import ExtraTuner, OverlapScheduler
from vlrl.runlog import RunDir
from vlrl.task import open_task
from vlrl.trainer.policy import PolicyTrainer
from vlrl.types import Sample
from vlrl.vision import VisionInputs
from vlrl.worker_thread import WorkerThread, threads_here


@dataclass
class Run:
    """A training run's parts: those ``build`` checks and loads before any work, then those ``start`` opens."""

    cfg: TrainConfig
    model_dir: Path
    first_epoch: Iterable[Sample]  # the task opened under cfg.seed: the first epoch of the training stream
    reward: Reward
    teacher: Any  # the warm start's agent (None: no warm start)
    heldout_agent: Any  # also scored on the held-out questions (None: none)
    heldout: list[Sample]
    tokenizer: Any
    vision: VisionInputs
    trainer: PolicyTrainer
    algo: Algorithm
    state: RunState
    out: RunDir
    compute: WorkerThread = field(default_factory=lambda: WorkerThread("vlrl-trainer"))  # every training call
    engine: Engine | None = None
    verifier: Verifier | None = None
    verifier_engine: Engine | None = None  # the verifier's own engine (None: none, or the policy's)
    judge: AnswerJudge | None = None  # the reward judge (reward_judge)
    judge_engine: Engine | None = None  # its own engine (None: none, or the policy's)
    ranks: Any = None  # trainer ranks 1.. (None: one rank)
    started: float = 0.0  # perf_counter when the engine was up
    loop_threads: int | None = None  # the event loop thread's torch threads before the run kept it to one

    async def close(self) -> None:
        """Close the engines, the other trainer ranks and the trainer's thread."""
        for engine in (self.engine, self.verifier_engine, self.judge_engine):
            if engine is not None:
                await engine.close()
        if self.ranks is not None:
            self.ranks.close()
        self.compute.close()
        if self.loop_threads is not None:
            threads_here(self.loop_threads)


def build(cfg: TrainConfig) -> Run:
    """Check what can be checked (the model folders, the device, the task, the reward, the agents, the held-out
    questions), then load the model, the trainer, the algorithm, a checkpoint to resume and the run directory."""
    model_dir = check_model_dir(cfg.model.path)
    if cfg.distributed.trainer_threads:  # before the trainer's thread runs its first op, which reads it
        torch.set_num_threads(cfg.distributed.trainer_threads)
    if cfg.model.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model.device {cfg.model.device!r}: torch sees no CUDA device on this machine")
    for folder in (cfg.verifier.model, cfg.reward_judge.model):
        if folder not in ("", "policy"):
            check_model_dir(folder)
    first_epoch, reward_name = open_task(cfg.task, cfg.seed)
    reward = resolve("reward", reward_name)
    ws, judge = cfg.warmstart, cfg.heldout.agent
    teacher = resolve("agent", ws.agent)(seed=cfg.seed, **ws.agent_args) if ws.agent else None
    heldout_agent = (teacher if judge == ws.agent else resolve("agent", judge)(seed=cfg.seed)) if judge else None
    heldout = heldout_samples(cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vision = VisionInputs(model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    dtype = getattr(torch, cfg.model.dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(cfg.model.device)
    algo = make_algorithm(Setting(cfg.algo, cfg.seed, model_dir, vision, dtype, cfg.model.device))
    reference = copy.deepcopy(model).eval().requires_grad_(False) if algo.objective.needs_reference else None
    trainer = PolicyTrainer(model, vision, cfg.optim, algo.objective, optimizer_steps(cfg), reference)
    state = load_checkpoint(cfg.resume, trainer, algo) if cfg.resume else RunState()
    out = RunDir.create(cfg.log.dir, cfg.name, to_dict(cfg), cfg.log.wandb, cfg.log.wandb_project)
    if cfg.resume:
        adopt_reference(Path(cfg.resume), out.path / "checkpoints")
    for record in state.history:
        out.log(record["step"], {k: v for k, v in record.items() if k != "step"})
    return Run(cfg, model_dir, first_epoch, reward, teacher, heldout_agent, heldout, tokenizer, vision, trainer, algo,
               state, out)


def optimizer_steps(cfg: TrainConfig) -> int:
    """The optimizer steps of the whole run: what the LR schedule spans."""
    return cfg.steps * cfg.algo.epochs * cfg.algo.mini_batches


async def start(run: Run) -> None:
    """Open the policy's engine, the other trainer ranks and the verifier (inside the run's cluster)."""
    cfg = run.cfg
    run.engine = await open_engine(cfg.model, cfg.engine, cfg.distributed)
    if shares_engine_thread(cfg, run.engine):  # one OpenMP team for both (vlrl/worker_thread.py)
        run.compute = run.engine.worker
        run.loop_threads = threads_here(1)  # the event loop's own torch ops (weights copied in, images) stay on it
    run.started = time.perf_counter()
    if cfg.distributed.world_size > 1:
        from vlrl.distributed.ranks import RemoteRanks

        run.ranks = await RemoteRanks.start(run.trainer, run.model_dir, cfg.distributed, run.compute)
    run.verifier, run.verifier_engine = await open_verifier(cfg, run.engine, run.tokenizer)
    run.judge, run.judge_engine = await open_reward_judge(cfg.reward_judge, run.engine, run.tokenizer, cfg.model,
                                                          cfg.engine, cfg.distributed)


def shares_engine_thread(cfg: TrainConfig, engine: Engine) -> bool:
    """Whether the trainer's calls run on the HF engine's own thread: both compute on this process's CPU and take
    turns (no decoding through the update)."""
    return (isinstance(engine, HFEngine) and engine.device.type == "cpu" and cfg.model.device == "cpu"
            and not cfg.rollout.decode_during_update)


async def open_verifier(cfg: TrainConfig, policy_engine: Engine, tokenizer: Any) -> tuple[Verifier | None,
                                                                                       Engine | None]:
    """The verifier ``cfg.verifier`` asks for, and the engine started for it (None when it shares the policy's)."""
    v = cfg.verifier
    if not v.model:
        return None, None
    if v.model == "policy":
        return Verifier(policy_engine, tokenizer, v.question, v.yes, v.no), None
    return await open_model_verifier(v.model, "verifier.model", v, cfg.model, tokenizer, cfg.engine, cfg.distributed)


def task_stream(cfg: TrainConfig, first: Iterable[Sample] | None = None) -> Iterator[Sample]:
    """The task's samples, epoch after epoch (a finite dataset starts over with the next seed).

    ``first``: the task already opened with ``cfg.seed``, used as the first epoch.
    """
    epoch = 0
    while True:
        samples = first if epoch == 0 and first is not None else open_task(cfg.task, cfg.seed + epoch)[0]
        produced = 0
        for sample in samples:
            produced += 1
            yield sample
        if produced == 0:
            raise ValueError(f"task {cfg.task.name!r} gave no samples")
        epoch += 1


def make_scheduler(cfg: TrainConfig, manager: RolloutManager, state: RunState) -> OverlapScheduler:
    """The overlap scheduler, with a checkpoint's groups in flight started again first."""
    groups, extra = cfg.rollout.prompts_per_step, cfg.rollout.extra_groups
    tuner = ExtraTuner(-(-groups // 4), groups, max(1, groups // 8)) if extra == "auto" else None
    scheduler = OverlapScheduler(manager, groups, tuner.extra if tuner else int(extra), cfg.rollout.max_staleness,
                                 tuner, cfg.rollout.decode_during_update)
    scheduler.readmit(state.pending, seed=cfg.seed * 100_003 + state.step, tag=f"s{state.step}-resumed")
    return scheduler


def progress_bar(cfg: TrainConfig, total: int, start: int, desc: str) -> Any:
    """A tqdm bar over ``total`` steps (None when ``log.progress`` is off)."""
    if not cfg.log.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="step")
