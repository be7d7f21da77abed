"""`vlrl train`: the RL recipe, read top to bottom.

    build       every check before any work (the config, the model folders, the task, the reward, the
                agents); the model, the trainer, the algorithm (``algo.name``), a checkpoint to resume
    start       the policy's engine, the other trainer ranks, the verifier
    warm start  supervised steps on a teacher's trajectories, so the model knows the format and the tools
    held-out    greedy accuracy on questions never trained on, before RL
    RL steps    collect (the rollout manager runs the groups, rewarded) -> prepare (the algorithm's
                advantages) -> update (its optimizer steps, on the trainer's thread: the event loop stays
                free) -> sync (the weights go to the engine as version + 1) -> log
    held-out    the same questions after RL, with paired intervals against before
    finish      curves, the summary

A run that loses a data-parallel trainer rank resumes from its last checkpoint (``run_training``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from vlrl.algos.units import Batch
from vlrl.clock import now
from vlrl.config import TrainConfig
from vlrl.distributed import cluster
from vlrl.engines.base import Engine, EngineLost, PartLost
from vlrl.env import Env, make_env
from vlrl.metrics import (
    AlgoFigures,
    EngineFigures,
    RewardFigures,
    StepRecord,
    VerifierFigures,
    WarmStartRecord,
    update_figures,
)
from vlrl.recipes.checkpoint import (
    BadCheckpoint,
    auto_checkpoints,
    latest_checkpoint,
    save_checkpoint,
    save_model_folder,
    save_reference,
)
from vlrl.recipes.parts import Run, build, make_scheduler, progress_bar, start, task_stream
from vlrl.recipes.summary import (
    HELDOUT_MARKS,
    heldout_after,
    heldout_before,
    peak_rss_gb,
    print_summary,
    write_heldout,
)
from vlrl.rollout.chunks import ChunkTuner
from vlrl.rollout.feed import OnThread
from vlrl.rollout.figures import rollout_record, watch_tool_use
from vlrl.rollout.manager import RolloutManager, RolloutResult
from vlrl.rollout.play import play_agent
from vlrl.rollout.scheduler import OverlapScheduler
from vlrl.rollout.timeline import TRAINER
from vlrl.trainer.policy import PolicyTrainer
from vlrl.trainer.streamed import StreamedScores
from vlrl.types import Group, Sample, Trajectory
from vlrl.worker_thread import WorkerThread


def run_training(cfg: TrainConfig) -> Path:
    """`vlrl train`: ``train`` in an event loop of its own; a run that loses a data-parallel trainer rank or its
    engine's process resumes from its last checkpoint (as a new run directory, like ``resume=``, with a new engine),
    ``distributed.max_restarts`` times; the step it was in is not trained, so none is trained twice.
    ``resume=auto``: from the newest whole checkpoint of a run of this name under ``log.dir`` (one that does not load
    is named and the one before it taken), or from the beginning if there is none."""
    candidates = auto_checkpoints(Path(cfg.log.dir), cfg.name) if cfg.resume == "auto" else None
    if candidates is not None:
        cfg = _auto_resume(cfg, candidates)
    restarts = 0
    while True:
        try:
            return asyncio.run(train(cfg))
        except BadCheckpoint as e:
            if candidates is None:
                raise
            print(f"resume=auto: passing over {e}", file=sys.stderr)
            cfg = _auto_resume(cfg, candidates)
        except PartLost as e:
            restarts += 1
            if restarts > cfg.distributed.max_restarts:
                raise
            print(f"vlrl train: {e}; resuming ({restarts}/{cfg.distributed.max_restarts})", file=sys.stderr)
            cfg = dataclasses.replace(cfg, resume=e.checkpoint or cfg.resume)


def _auto_resume(cfg: TrainConfig, candidates: Iterator[Path]) -> TrainConfig:
    found = next(candidates, None)
    print(f"resume=auto: {found if found else f'no checkpoint of a run named {cfg.name!r} in {cfg.log.dir}'}"
          f"{'' if found else '; starting from the beginning'}", file=sys.stderr)
    return dataclasses.replace(cfg, resume=str(found) if found else "")


async def train(cfg: TrainConfig) -> Path:
    """Run ``cfg``; returns the run directory."""
    run = build(cfg)
    with cluster(cfg.distributed.backend, cfg.distributed.address):  # Ray only for backend ray
        try:
            await start(run)
            if run.trainer.version:  # a resumed run: the engine serves the checkpoint's weights
                await sync_weights(run.trainer, run.engine, run.compute, bump=False)
            async with make_env(cfg.env, run.tokenizer, run.vision) as env:
                if run.teacher is not None and not cfg.resume:
                    await warm_start(run, env)
                if run.heldout and not cfg.resume:
                    run.state.summary |= await heldout_before(cfg, env, run.engine, run.tokenizer, run.reward,
                                                              run.heldout, run.heldout_agent)
                await rl_steps(run, env)
                summary = dict(run.state.summary)
                if run.heldout:
                    summary |= await heldout_after(cfg, env, run.engine, run.tokenizer, run.reward, run.heldout,
                                                   run.state.summary)
        except PartLost as e:
            last = latest_checkpoint(run.out.path) or (Path(cfg.resume) if cfg.resume else None)
            raise type(e)(f"{e}; the run can resume from {last or 'its start'}", str(last) if last else None) from e
        finally:
            await run.close()
    return finish(run, summary)


async def warm_start(run: Run, env: Env) -> None:
    """Supervised steps on the teacher's trajectories (an optimizer of their own), then the weights go to the
    engine; a KL reference becomes the warm-started model, so KL keeps RL near what it learned."""
    cfg, ws = run.cfg, run.cfg.warmstart
    samples = list(islice(task_stream(dataclasses.replace(cfg, seed=cfg.seed + 7919)), ws.samples))
    began = time.perf_counter()
    demos = await play_agent(env, run.tokenizer, run.teacher, samples, "warmstart")
    print(f"warm start: {len(demos)} {ws.agent} trajectories in {time.perf_counter() - began:.1f} s")
    optim = dataclasses.replace(cfg.optim, lr=ws.lr, warmup_steps=0, schedule="constant", lora_rank=0)
    sft = await run.compute.run(run.trainer.sibling, optim, ws.steps, "warmstart")
    rng = random.Random(cfg.seed)
    progress = progress_bar(cfg, ws.steps, 0, f"{cfg.name} warm start")
    for step in range(ws.steps):
        m = await run.compute.run(sft.imitate, rng.sample(demos, min(ws.batch_size, len(demos))))
        record = WarmStartRecord(m["sft_loss"], m["sft_token_p_over_half"], m["grad_norm"], m["lr"], m["update_s"])
        run.out.log(step, record.flat(), phase="warmstart")
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{record.loss:.3f}")
    if progress is not None:
        progress.close()
    await sync_weights(run.trainer, run.engine, run.compute)  # the sibling trained the trainer's own model
    if ws.save:  # to evaluate beside RL's (`vlrl eval --compare`)
        target = run.out.path / "warmstart" / "model"
        shutil.rmtree(target, ignore_errors=True)
        await run.compute.run(lambda: save_model_folder(target, run.trainer, run.trainer.weights(), run.model_dir))
    if run.trainer.reference is not None:
        await run.compute.run(run.trainer.reset_reference)
        # kept for the checkpoints: a run resumed from one has the warm-started reference, not the loaded model
        await run.compute.run(lambda: save_reference(run.out.path / "checkpoints", run.trainer.weights()))


async def rl_steps(run: Run, env: Env) -> None:
    """The RL steps from where the run is to ``steps``, each followed by its bookkeeping."""
    cfg, state = run.cfg, run.state
    overlap = cfg.rollout.schedule == "overlap"
    v = cfg.verifier
    tuner = ChunkTuner(tuple(v.chunk_candidates), v.chunk_window, v.chunk_retry_every) \
        if v.chunk_tokens == "auto" else None
    streams = [OnThread(scores, run.compute) for scores in streamed_models(run)] if cfg.algo.stream_chunk_tokens \
        else []
    manager = RolloutManager(run.engine, env, run.tokenizer, run.reward, cfg.rollout.sampling(),
                             cfg.rollout.group_size, "async" if overlap else cfg.rollout.schedule, run.verifier,
                             cfg.verifier.weight, tuner.current if tuner else int(cfg.verifier.chunk_tokens),
                             streams=streams, stream_chunk=cfg.algo.stream_chunk_tokens, judge=run.judge)
    scheduler = make_scheduler(cfg, manager, state) if overlap else None
    stream = islice(task_stream(cfg, run.first_epoch), state.cursor, None)
    progress = progress_bar(cfg, cfg.steps, state.step, cfg.name)
    for step in range(state.step, cfg.steps):
        if tuner is not None:
            manager.chunk_tokens = tuner.current
        try:
            record = await rl_step(run, step, manager, scheduler, stream)
        except Exception as e:  # a weight push to a dead engine, say: the step is done again after a resume
            why = run.engine.dead()
            if why is None:
                raise
            raise EngineLost(f"step {step}: {why}") from e
        if tuner is not None:
            tuner.observe(record.perf.step_s)
        warning = watch_tool_use(state.summary.setdefault("tool_health", {}), step, record.rollout.tool_call_rate)
        if warning is not None:
            print(warning, file=sys.stderr)
        await after_step(run, step, record, scheduler)  # the checkpoint keeps the tool-use watch with the summary
        if progress is not None:
            reward = record.reward or RewardFigures()
            progress.update(1)
            progress.set_postfix(reward=f"{reward.mean:.3f}", acc=f"{reward.parts.get('accuracy', 0):.3f}",
                                 tools=f"{record.rollout.tool_call_rate:.2f}")
    if progress is not None:
        progress.close()
    left = await scheduler.close() if scheduler is not None else 0
    state.summary.setdefault("groups", new_accounts())["in_flight_at_end"] = left


async def rl_step(run: Run, step: int, manager: RolloutManager, scheduler: OverlapScheduler | None,
                  stream: Iterator[Sample]) -> StepRecord:
    """collect -> prepare -> update -> sync -> log; returns the step's record."""
    began = now()
    manager.timeline.mark(f"step {step}", began)
    result, record = await collect(run.cfg, step, manager, scheduler, stream)
    why = run.engine.dead()
    if why is not None:  # before the update: the step is done again after a resume, never trained twice
        raise EngineLost(f"step {step}: {why}")
    rolled = now()
    batch = await run.compute.run(prepare, run, result.groups)
    record.algo = AlgoFigures(prepared=batch.metrics)
    record.perf = dataclasses.replace(record.perf, prepare_s=now() - rolled)
    if batch.items:
        with manager.timeline.span(TRAINER, "update"):
            record.loss, times = update_figures(await run.compute.run(run.algo.update, run.trainer, batch, step))
        with manager.timeline.span(TRAINER, "sync"):
            record.perf = dataclasses.replace(record.perf, **times,
                                              sync_s=await sync_weights(run.trainer, run.engine, run.compute))
    log_step(run, step, manager, scheduler, result, record, (began, rolled, now()))
    return record


def streamed_models(run: Run) -> list[StreamedScores]:
    """The trainer-side models whose per-token scores the step reads: the KL reference, the algorithm's own."""
    reference = run.trainer.reference_scores if run.algo.objective.needs_reference else None
    return [*([reference] if reference is not None else []), *run.algo.streamed()]


def prepare(run: Run, groups: Sequence[Group]) -> Batch:
    """The algorithm's batch, each item with the reference's logprobs where they were streamed while it decoded;
    the streamed and late tokens of every such model in the batch's figures."""
    batch = run.algo.prepare(groups)
    if run.algo.objective.needs_reference:
        batch.items = run.trainer.with_reference(batch.items)
    if run.cfg.algo.stream_chunk_tokens:
        for scores in streamed_models(run):
            batch.metrics |= scores.take_stats()
    return batch


async def collect(cfg: TrainConfig, step: int, manager: RolloutManager, scheduler: OverlapScheduler | None,
                  stream: Iterator[Sample]) -> tuple[RolloutResult, StepRecord]:
    """The step's rewarded groups: ``prompts_per_step`` new samples (sync), or the overlap scheduler's closed
    batch; and the step's record as far as the rollout knows it."""
    seed = cfg.seed * 100_003 + step
    if scheduler is None:
        samples = list(islice(stream, cfg.rollout.prompts_per_step))
        result = await manager.rollout(samples, seed=seed, tag=f"s{step}")
        record = rollout_record(result, groups_started=len(samples))
    else:
        result, stats = await scheduler.step(lambda n: list(islice(stream, n)), seed=seed, tag=f"s{step}")
        record = rollout_record(result, groups_started=stats.started)
        record.sched = stats.figures()
    if manager.verifier is not None:
        record.verifier = dataclasses.replace(record.verifier or VerifierFigures(),
                                              chunk_tokens=manager.chunk_tokens)
    for message in result.errors:
        print(f"step {step}: dropped: {message}")
    for sink in manager.streams:
        for message in sink.errors:
            print(f"step {step}: streaming failed, computed after the rollout instead: {message}")
        sink.errors.clear()
    return result, record


def log_step(run: Run, step: int, manager: RolloutManager, scheduler: OverlapScheduler | None,
             result: RolloutResult, record: StepRecord, times: tuple[float, float, float]) -> None:
    """The engines' counters and the timeline's fractions into ``record``; then metrics.jsonl, the timeline file,
    transcripts, and the scheduler's tuner."""
    cfg, engine = run.cfg, run.engine
    began, rolled, end = times
    record.engine = EngineFigures(engine.take_stats())
    if manager.verifier is not None and manager.verifier.engine is not engine and record.verifier is not None:
        record.verifier.engine = manager.verifier.engine.take_stats()
    close = end if cfg.rollout.decode_during_update else rolled  # trajectories are produced through the update
    record.perf = dataclasses.replace(record.perf, step_s=end - began, version=run.trainer.version,
                                      **manager.timeline.engine_figures(began, close, end, cfg.engine.max_num_seqs))
    if step + 1 == cfg.log.timeline or (step + 1 == cfg.steps and step < cfg.log.timeline):
        manager.timeline.write(run.out.path)
    elif step >= cfg.log.timeline:
        manager.timeline.prune(end)
    if scheduler is not None:
        scheduler.tune(record.reward.mean if record.reward is not None else 0.0)
    run.out.log(step, record.flat())
    run.out.log(step, {"trajectories": [shape(t) for t in result.trajectories],
                       "ids": [t.id for t in result.trajectories]}, phase="lengths")
    if cfg.log.transcripts_every and step % cfg.log.transcripts_every == 0:
        run.out.transcripts(step, result.trajectories, run.tokenizer)


def shape(traj: Trajectory) -> list[Any]:
    """A trained trajectory's shape for ``lengths.jsonl`` (what `vlrl plan --lengths` replays): [prompt tokens,
    policy tokens of each turn, observation tokens]."""
    sizes = {kind: [len(s.token_ids) for s in traj.segments if s.kind == kind]
             for kind in ("prompt", "policy", "observation")}
    return [sum(sizes["prompt"]), sizes["policy"], sum(sizes["observation"])]


async def after_step(run: Run, step: int, record: StepRecord, scheduler: OverlapScheduler | None) -> None:
    """Where the run is now (for a checkpoint), the curves, a checkpoint every ``checkpoint_every`` steps and at
    the end, and ``checkpoints/last``: a stable name for the final weights."""
    cfg, state = run.cfg, run.state
    state.step, state.cursor = step + 1, state.cursor + record.sched.groups_started
    account(state.summary.setdefault("groups", new_accounts()), record, cfg.rollout.group_size)
    state.pending = scheduler.pending() if scheduler is not None else []
    state.history = run.out.history
    if cfg.log.plots_every and (step + 1) % cfg.log.plots_every == 0:
        run.out.plot()
    if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or step + 1 == cfg.steps:
        await run.compute.run(save_checkpoint, run.out.path / "checkpoints" / f"step-{step + 1}", run.trainer,
                              state, run.model_dir, run.algo)
    if step + 1 == cfg.steps:
        last = run.out.path / "checkpoints" / "last"
        last.unlink(missing_ok=True)
        last.symlink_to(f"step-{step + 1}")


def new_accounts() -> dict[str, Any]:
    """The run's account of its prompt groups (``summary.json: groups``): every group that entered was trained,
    dropped (its trajectories counted by reason) or was still in flight when the run ended (the last step closed
    without it; not trained), so entered = trained + dropped + in_flight_at_end."""
    return {"entered": 0, "trained": 0, "dropped_trajectories": {}, "in_flight_at_end": 0}


def account(groups: dict[str, Any], record: StepRecord, group_size: int) -> None:
    """Add one step's groups to the run's account."""
    groups["entered"] += record.sched.groups_started
    groups["trained"] += record.rollout.trajectories // group_size
    for reason, n in record.rollout.dropped.items():
        groups["dropped_trajectories"][reason] = groups["dropped_trajectories"].get(reason, 0) + n


def finish(run: Run, summary: dict[str, Any]) -> Path:
    """The accuracy curve with the held-out marks, summary.json, the summary printed; returns the run directory."""
    cfg, out = run.cfg, run.out
    out.plot({name: summary[key] for name, key in HELDOUT_MARKS.items() if summary.get(key) is not None})
    last = out.history[-1] if out.history else {}
    summary |= {"steps": cfg.steps, "final_reward": last.get("reward/mean"),
                "final_accuracy": last.get("reward/accuracy"),
                "wall_seconds": time.perf_counter() - run.started, "peak_rss_gb": peak_rss_gb(),
                "weights_version": run.trainer.version}
    write_heldout(out.path / "heldout.jsonl", run.heldout, summary)
    out.finish(summary)
    print_summary(summary, out.path)
    return out.path


async def sync_weights(trainer: PolicyTrainer, engine: Engine, compute: WorkerThread | None = None,
                       bump: bool = True) -> float:
    """The trainer's weights --> ``engine``, as the next version (or, ``bump`` false, as the version they are: a
    resumed run); returns the seconds it took. Every weight push of a run goes through here.

    ``compute``: the thread the training runs on, where the weights are gathered (sharded: from every rank).
    """
    began = time.perf_counter()
    if bump:
        trainer.version += 1
    with torch.no_grad():
        weights = trainer.weights() if compute is None else await compute.run(trainer.weights)
        await engine.update_weights(weights, trainer.version)
    return time.perf_counter() - began
