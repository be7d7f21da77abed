"""`vlrl train`: sample groups with tools, reward them, take a GRPO step, push the weights; repeat.

Everything that can be checked is checked before any work starts (the config's keys and
types, the model folder, the task, the reward). Each step:
  rollout  -- the rollout manager runs prompts_per_step x group_size trajectories;
  advantage -- group-normalized rewards; groups whose rewards all agree may be dropped (counted);
  update   -- one optimizer step over the trajectories (on the trainer's thread: the event loop stays free);
  sync     -- the new weights go to the engine as version + 1.
Then metrics.jsonl, the curves, transcripts every K steps and checkpoints every N.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import resource
import sys
import time
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from vlrl.config import TaskConfig, TrainConfig, to_dict
from vlrl.distributed import TrainerRankLost, cluster, open_engine
from vlrl.engines.base import Engine, check_model_dir
from vlrl.env import Env, make_env
from vlrl.eval.heldout import accuracy_by_task, evaluate_agent, evaluate_policy, majority_baseline, paired_bootstrap
from vlrl.eval.judges import open_model_verifier
from vlrl.recipes.checkpoint import RunState, latest_checkpoint, load_checkpoint, save_checkpoint
from vlrl.registry import resolve
from vlrl.rewards.verifier import Verifier
from vlrl.rollout.chunks import ChunkTuner
from vlrl.rollout.manager import RolloutManager, RolloutResult
from vlrl.rollout.play import play_agent
from vlrl.rollout.scheduler import ExtraTuner, OverlapScheduler
from vlrl.rollout.timeline import TRAINER
from vlrl.runlog import RunDir
from vlrl.task import open_task
from vlrl.trainer.critic import Critic
from vlrl.trainer.items import grpo_items, ppo_items
from vlrl.trainer.policy import PolicyTrainer, TrainItem
from vlrl.types import Sample
from vlrl.vision import VisionInputs
from vlrl.worker_thread import WorkerThread

# held-out figures drawn on accuracy.png (greedy answers to questions never trained on)
HELDOUT_MARKS = {"teacher (held-out)": "teacher_accuracy", "warm start (held-out, greedy)": "heldout_accuracy_warmstart",
                 "RL (held-out, greedy)": "heldout_accuracy_rl", "majority answer": "majority_baseline"}
# paired 95% intervals of RL minus a baseline over the same held-out questions: figure -> the baseline's
# per-question results (the warm start's: the RL gain; the teacher's: whether RL beats it)
PAIRED = {"rl_gain_ci95": "heldout_correct_warmstart", "rl_vs_teacher_ci95": "heldout_correct_teacher"}


def rollout_metrics(result: RolloutResult) -> dict[str, Any]:
    """Per-step means over the step's trajectories (reward and its parts, tools, turns, lengths, finishes)."""
    trajs = result.trajectories
    if not trajs:
        return {"trajectories": 0, "dropped": dict(result.dropped)}
    n = len(trajs)
    stats = [t.tool_stats() for t in trajs]
    calls = sum(s["tool_calls"] for s in stats)
    policy_tokens = [sum(t.loss_mask) for t in trajs]
    metrics: dict[str, Any] = {
        "reward": sum(t.reward or 0.0 for t in trajs) / n,
        **{k: sum(t.reward_parts.get(k, 0.0) for t in trajs) / n for k in trajs[0].reward_parts},
        "tool_call_rate": sum(s["tool_calls"] > 0 for s in stats) / n,
        "tool_calls": calls / n,
        "tool_error_rate": sum(s["tool_errors"] for s in stats) / max(calls, 1),
        "parse_errors": sum(s["parse_errors"] for s in stats) / n,
        "sandbox_restarts": sum(s["sandbox_restarts"] for s in stats),
        "turns": sum(t.turns for t in trajs) / n,
        "response_length": sum(policy_tokens) / n,
        "finish": dict(Counter(t.finish_reason for t in trajs)),
        "trajectories": n,
        "dropped": dict(result.dropped),
        "rollout_s": result.seconds["generate"],
        "reward_s": result.seconds["reward"],
        "tokens_per_s": sum(policy_tokens) / max(result.seconds["generate"], 1e-9),
        "behavior_version": min((v for t in trajs for v in t.versions if v >= 0), default=-1),
    }
    judged = [t.timings for t in trajs if "verifier_early_tokens" in t.timings]
    if judged:  # where the verifier's prefill happened: under decoding (early) or after the last token (late)
        early = sum(t["verifier_early_tokens"] for t in judged)
        late = sum(t["verifier_late_tokens"] for t in judged)
        metrics |= {"verifier_early_tokens": early, "verifier_late_tokens": late,
                    "verifier_hidden_fraction": early / max(early + late, 1),
                    "verifier_finish_s": sum(t["verifier_finish_s"] for t in judged) / len(judged)}
    return metrics


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


def run_training(cfg: TrainConfig) -> Path:
    """`vlrl train`: ``train`` in an event loop of its own; a run that loses a data-parallel trainer rank resumes
    from its last checkpoint (as a new run directory, like ``resume=``), ``distributed.max_restarts`` times."""
    restarts = 0
    while True:
        try:
            return asyncio.run(train(cfg))
        except TrainerRankLost as e:
            restarts += 1
            if restarts > cfg.distributed.max_restarts:
                raise
            print(f"vlrl train: {e}; resuming ({restarts}/{cfg.distributed.max_restarts})", file=sys.stderr)
            cfg = dataclasses.replace(cfg, resume=e.checkpoint or cfg.resume)


async def train(cfg: TrainConfig) -> Path:
    """Run ``cfg``; returns the run directory."""
    model_dir = check_model_dir(cfg.model.path)
    if cfg.model.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model.device {cfg.model.device!r}: torch sees no CUDA device on this machine")
    if cfg.verifier.model not in ("", "policy"):
        check_model_dir(cfg.verifier.model)
    first_epoch, reward_name = open_task(cfg.task, cfg.seed)  # the task, its reward, the agents: before any work
    reward = resolve("reward", reward_name)
    teacher = resolve("agent", cfg.warmstart.agent)(seed=cfg.seed, **cfg.warmstart.agent_args) \
        if cfg.warmstart.agent else None
    judge_agent = cfg.heldout.agent
    heldout_agent = (teacher if judge_agent == cfg.warmstart.agent else resolve("agent", judge_agent)(seed=cfg.seed)) \
        if judge_agent else None
    heldout = _heldout_samples(cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vision = VisionInputs(model_dir)
    dtype = getattr(torch, cfg.model.dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(cfg.model.device)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if cfg.algo.loss.kl_coef > 0 else None
    trainer = PolicyTrainer(model, vision, cfg.optim, cfg.algo.loss, cfg.steps * cfg.algo.epochs * cfg.algo.mini_batches,
                            reference)
    critic = Critic(cfg.algo.critic.model_path or model_dir, vision, cfg.algo.critic, dtype).to(cfg.model.device) \
        if cfg.algo.name == "ppo" else None
    state = load_checkpoint(cfg.resume, trainer, critic) if cfg.resume else RunState()
    run = RunDir.create(cfg.log.dir, cfg.name, to_dict(cfg), cfg.log.wandb, cfg.log.wandb_project)
    for record in state.history:
        run.log(record["step"], {k: v for k, v in record.items() if k != "step"})
    sampling = cfg.rollout.sampling()
    with cluster(cfg.distributed.backend, cfg.distributed.address):  # Ray only for backend ray
        engine = await open_engine(cfg.model, cfg.engine, cfg.distributed)
        compute = WorkerThread("vlrl-trainer")  # every training call on one thread (see vlrl.worker_thread)
        wall = time.perf_counter()
        verifier_engine = ranks = None
        try:
            ranks = await _ranks(cfg, trainer, model_dir, compute)
            verifier, verifier_engine = await open_verifier(cfg, engine, tokenizer)
            tuner = ChunkTuner() if cfg.verifier.chunk_tokens == "auto" else None
            if trainer.version:  # a resumed run: the engine serves the checkpoint's weights
                await sync_weights(trainer, engine, compute, bump=False)
            stream = islice(task_stream(cfg, first_epoch), state.cursor, None)
            async with make_env(cfg.env, tokenizer, vision) as env:
                if teacher is not None and not cfg.resume:
                    await _warm_start(cfg, env, tokenizer, vision, teacher, trainer, engine, run, compute)
                    if trainer.reference is not None:  # KL keeps RL near what the warm start learned
                        await compute.run(trainer.reset_reference)
                if heldout and not cfg.resume:
                    state.summary |= await _heldout_before(cfg, env, engine, tokenizer, reward, heldout, heldout_agent)
                overlap = cfg.rollout.schedule == "overlap"
                manager = RolloutManager(engine, env, tokenizer, reward, sampling, cfg.rollout.group_size,
                                         "async" if overlap else cfg.rollout.schedule, verifier, cfg.verifier.weight,
                                         tuner.current if tuner else int(cfg.verifier.chunk_tokens))
                scheduler = _scheduler(cfg, manager, state) if overlap else None
                progress = _progress(cfg, state.step)
                for step in range(state.step, cfg.steps):
                    if tuner is not None:
                        manager.chunk_tokens = tuner.current
                    metrics = await _step(cfg, step, manager, scheduler, trainer, engine, stream, run, tokenizer,
                                          critic, compute)
                    if tuner is not None:
                        tuner.observe(metrics["step_s"])
                    state.step, state.cursor = step + 1, state.cursor + metrics["groups_started"]
                    state.pending = scheduler.pending() if scheduler is not None else []
                    state.history = run.history
                    if cfg.log.plots_every and (step + 1) % cfg.log.plots_every == 0:
                        run.plot()
                    if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or step + 1 == cfg.steps:
                        await compute.run(save_checkpoint, run.path / "checkpoints" / f"step-{step + 1}", trainer,
                                          state, model_dir, critic)
                    if step + 1 == cfg.steps:  # a stable name for the final weights: checkpoints/last/model
                        last = run.path / "checkpoints" / "last"
                        last.unlink(missing_ok=True)
                        last.symlink_to(f"step-{step + 1}")
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(reward=f"{metrics.get('reward', 0):.3f}",
                                             acc=f"{metrics.get('accuracy', 0):.3f}",
                                             tools=f"{metrics.get('tool_call_rate', 0):.2f}")
                if progress is not None:
                    progress.close()
                if scheduler is not None:
                    await scheduler.close()
                summary = dict(state.summary)
                if heldout:
                    summary |= await _heldout_after(cfg, env, engine, tokenizer, reward, heldout, state.summary)
        except TrainerRankLost as e:
            last = latest_checkpoint(run.path)
            raise TrainerRankLost(f"{e}; the run can resume from {last or 'its start'}",
                                  str(last) if last else None) from e
        finally:
            await engine.close()
            if verifier_engine is not None:
                await verifier_engine.close()
            if ranks is not None:
                ranks.close()
            compute.close()
        run.plot({name: summary[key] for name, key in HELDOUT_MARKS.items() if summary.get(key) is not None})
        last = run.history[-1] if run.history else {}
        summary |= {"steps": cfg.steps, "final_reward": last.get("reward"), "final_accuracy": last.get("accuracy"),
                    "wall_seconds": time.perf_counter() - wall, "peak_rss_gb": peak_rss_gb(),
                    "weights_version": trainer.version}
        for baseline in PAIRED.values():  # per-question lists: kept for resume, not for the summary
            summary.pop(baseline, None)
        run.finish(summary)
        _print_summary(summary, run.path)
        return run.path


async def open_verifier(cfg: TrainConfig, policy_engine: Engine, tokenizer: Any) -> tuple[Verifier | None,
                                                                                       Engine | None]:
    """The verifier ``cfg.verifier`` asks for, and the engine started for it (None when it shares the policy's)."""
    v = cfg.verifier
    if not v.model:
        return None, None
    if v.model == "policy":
        return Verifier(policy_engine, tokenizer, v.question, v.yes, v.no), None
    return await open_model_verifier(v.model, "verifier.model", v, cfg.model, tokenizer, cfg.engine, cfg.distributed)


async def sync_weights(trainer: PolicyTrainer, engine: Engine, compute: WorkerThread | None = None,
                       bump: bool = True) -> float:
    """The trainer's weights --> ``engine``, as the next version (or, ``bump`` false, as the version they are: a
    resumed run); returns the seconds it took. Every weight push of a run goes through here.

    ``compute``: the thread the training runs on, where the weights are gathered (sharded: from every rank).
    """
    start = time.perf_counter()
    if bump:
        trainer.version += 1
    with torch.no_grad():
        weights = trainer.weights() if compute is None else await compute.run(trainer.weights)
        await engine.update_weights(weights, trainer.version)
    return time.perf_counter() - start


def _heldout_samples(cfg: TrainConfig) -> list[Sample]:
    if not cfg.heldout.samples:
        return []
    task = TaskConfig(cfg.task.name, {**cfg.task.args, **cfg.heldout.task_args}, cfg.task.reward)
    samples = list(islice(open_task(task, cfg.heldout.seed)[0], cfg.heldout.samples))
    if len(samples) < cfg.heldout.samples:
        raise ValueError(f"heldout.samples is {cfg.heldout.samples} but the held-out task has {len(samples)}")
    return samples


async def _warm_start(cfg: TrainConfig, env: Env, tokenizer: Any, vision: VisionInputs, agent: Any,
                      trainer: PolicyTrainer, engine: Any, run: RunDir, compute: WorkerThread) -> None:
    """Supervised steps on the agent's trajectories, then the weights go to the engine."""
    ws = cfg.warmstart
    samples = list(islice(task_stream(dataclasses.replace(cfg, seed=cfg.seed + 7919)), ws.samples))
    start = time.perf_counter()
    demos = await play_agent(env, tokenizer, agent, samples, "warmstart")
    print(f"warm start: {len(demos)} {ws.agent} trajectories in {time.perf_counter() - start:.1f} s")
    optim = dataclasses.replace(cfg.optim, lr=ws.lr, warmup_steps=0, schedule="constant", lora_rank=0)
    sft = await compute.run(trainer.sibling, optim, dataclasses.replace(cfg.algo.loss, kl_coef=0.0), ws.steps,
                            "warmstart")
    rng = random.Random(cfg.seed)
    progress = _progress(dataclasses.replace(cfg, steps=ws.steps, name=f"{cfg.name} warm start"), 0)
    for step in range(ws.steps):
        metrics = await compute.run(sft.imitate, rng.sample(demos, min(ws.batch_size, len(demos))))
        run.log(step, metrics, phase="warmstart")
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['sft_loss']:.3f}")
    if progress is not None:
        progress.close()
    await sync_weights(trainer, engine, compute)  # the sibling trained the trainer's own model


async def _heldout_before(cfg: TrainConfig, env: Env, engine: Any, tokenizer: Any, reward: Any,
                          samples: list[Sample], agent: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {"heldout_questions": len(samples), "majority_baseline": majority_baseline(samples,
                                                                                                          reward)}
    if agent is not None:
        judged = await evaluate_agent(env, tokenizer, reward, agent, samples, tag="heldout-agent")
        figures |= {"teacher_accuracy": judged.accuracy, "teacher_tool_call_rate": judged.tool_call_rate,
                    "heldout_correct_teacher": judged.correct}
    before = await evaluate_policy(engine, env, tokenizer, reward, samples, cfg.rollout.max_new_tokens, "heldout-ws")
    figures |= {"heldout_accuracy_warmstart": before.accuracy, "tool_call_rate_warmstart": before.tool_call_rate,
                "heldout_dropped_warmstart": dict(before.dropped), "heldout_correct_warmstart": before.correct}
    return figures


async def _heldout_after(cfg: TrainConfig, env: Env, engine: Any, tokenizer: Any, reward: Any,
                         samples: list[Sample], before: dict[str, Any]) -> dict[str, Any]:
    after = await evaluate_policy(engine, env, tokenizer, reward, samples, cfg.rollout.max_new_tokens, "heldout-rl")
    figures: dict[str, Any] = {"heldout_accuracy_rl": after.accuracy, "tool_call_rate_rl": after.tool_call_rate,
                               "heldout_dropped_rl": dict(after.dropped)}  # reason -> questions counted wrong
    for name, baseline in PAIRED.items():
        if baseline in before:
            figures[name] = list(paired_bootstrap(before[baseline], after.correct, seed=cfg.seed))
    earlier = {key.removeprefix("heldout_correct_"): before[key] for key in PAIRED.values() if key in before}
    figures["heldout_by_task"] = accuracy_by_task(samples, earlier | {"rl": after.correct})
    return figures


def peak_rss_gb() -> float:
    """Peak resident memory of this process plus its largest child (an engine's workers), in GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024**2


def _print_summary(summary: dict[str, Any], path: Path) -> None:
    keys = ("heldout_questions", "teacher_accuracy", "heldout_accuracy_warmstart", "heldout_accuracy_rl",
            *PAIRED, "majority_baseline", "tool_call_rate_warmstart", "tool_call_rate_rl", "final_reward",
            "wall_seconds", "peak_rss_gb")
    for key in keys:
        if summary.get(key) is not None:
            value = summary[key]
            shown = f"[{value[0]:+.3f}, {value[1]:+.3f}]" if isinstance(value, list) else (
                f"{value:.3f}" if isinstance(value, float) else value)
            print(f"  {key:28s} {shown}")
    by_task = summary.get("heldout_by_task", {})
    if len(by_task) > 1:  # a mix: one line per task
        for task, figures in by_task.items():
            shown = ", ".join(f"{name} {value:.3f}" for name, value in figures.items() if name != "questions")
            print(f"  {task:28s} {figures['questions']} questions: {shown}")
    print(f"run written to {path} (summary.json, metrics.jsonl, reward.png, accuracy.png, transcripts/, "
          "checkpoints/)")


async def _ranks(cfg: TrainConfig, trainer: PolicyTrainer, model_dir: Path, compute: WorkerThread) -> Any:
    """Ranks 1..world_size-1 joined to ``trainer`` (rank 0) for data-parallel steps; None for one rank."""
    if cfg.distributed.world_size == 1:
        return None
    from vlrl.distributed.ranks import RemoteRanks

    return await RemoteRanks.start(trainer, model_dir, cfg.distributed, compute)


def _scheduler(cfg: TrainConfig, manager: RolloutManager, state: RunState) -> OverlapScheduler:
    """The overlap scheduler, with a checkpoint's groups in flight started again first."""
    groups, extra = cfg.rollout.prompts_per_step, cfg.rollout.extra_groups
    tuner = ExtraTuner(-(-groups // 4), groups, max(1, groups // 8)) if extra == "auto" else None
    scheduler = OverlapScheduler(manager, groups, tuner.extra if tuner else int(extra), cfg.rollout.max_staleness,
                                 tuner)
    scheduler.readmit(state.pending, seed=cfg.seed * 100_003 + state.step, tag=f"s{state.step}-resumed")
    return scheduler


async def _step(cfg: TrainConfig, step: int, manager: RolloutManager, scheduler: OverlapScheduler | None,
                trainer: PolicyTrainer, engine: Any, stream: Iterator[Sample], run: RunDir, tokenizer: Any,
                critic: Critic | None, compute: WorkerThread) -> dict[str, Any]:
    start = time.perf_counter()
    timeline = manager.timeline
    timeline.mark(f"step {step}", start)
    seed = cfg.seed * 100_003 + step
    if scheduler is None:
        samples = list(islice(stream, cfg.rollout.prompts_per_step))
        result = await manager.rollout(samples, seed=seed, tag=f"s{step}")
        metrics = rollout_metrics(result) | {"groups_started": len(samples)}
    else:
        result, stats = await scheduler.step(lambda n: list(islice(stream, n)), seed=seed, tag=f"s{step}")
        metrics = rollout_metrics(result) | stats.metrics()
    rolled = time.perf_counter()
    if manager.verifier is not None:
        metrics["chunk_tokens"] = manager.chunk_tokens
    for message in result.errors:
        print(f"step {step}: dropped: {message}")
    if critic is None:
        items, uniform = grpo_items(result.groups, cfg.algo.scale_advantages, cfg.algo.drop_uniform_groups)
        metrics["uniform_groups_dropped"] = uniform
    else:
        items, values, returns = await compute.run(ppo_items, result.groups, critic)
    if items:
        with timeline.span(TRAINER, "update"):
            metrics |= await compute.run(_update, cfg, trainer, items, step)
            if critic is not None:
                metrics |= await compute.run(critic.step, [it.trajectory for it in items], values, returns)
        with timeline.span(TRAINER, "sync"):
            metrics["sync_s"] = await sync_weights(trainer, engine, compute)
    metrics["version"] = trainer.version
    metrics |= engine.take_stats()
    if manager.verifier is not None and manager.verifier.engine is not engine:
        metrics |= {f"verifier_{key}": value for key, value in manager.verifier.engine.take_stats().items()}
    end = time.perf_counter()
    metrics["step_s"] = end - start
    metrics |= timeline.engine_figures(start, rolled, end, cfg.engine.max_num_seqs)
    if step + 1 == cfg.log.timeline or (step + 1 == cfg.steps and step < cfg.log.timeline):
        timeline.write(run.path)
    elif step >= cfg.log.timeline:
        timeline.prune(end)
    if scheduler is not None:
        scheduler.tune(metrics.get("reward", 0.0))
    run.log(step, metrics)
    if cfg.log.transcripts_every and step % cfg.log.transcripts_every == 0:
        run.transcripts(step, result.trajectories, tokenizer)
    return metrics


def _update(cfg: TrainConfig, trainer: PolicyTrainer, items: list[TrainItem], step: int) -> dict[str, Any]:
    """epochs x mini_batches optimizer steps on one rollout; figures averaged over them (grad norm: the last)."""
    updates = cfg.algo.epochs * cfg.algo.mini_batches
    if updates == 1:
        return trainer.step(items)
    old = trainer.logprobs(items)
    items = [dataclasses.replace(it, old_logprobs=lp) for it, lp in zip(items, old)]
    rng = random.Random(cfg.seed * 7_919 + step)
    size = len(items) // cfg.algo.mini_batches
    runs: list[dict[str, float]] = []
    for _ in range(cfg.algo.epochs):
        order = rng.sample(items, len(items))
        runs += [trainer.step(order[k: k + size]) for k in range(0, len(order), size)]
    merged = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    merged |= {"grad_norm": runs[-1]["grad_norm"], "lr": runs[-1]["lr"], "optimizer_steps": len(runs),
               "update_s": sum(r["update_s"] for r in runs)}
    return merged


def _progress(cfg: TrainConfig, start: int) -> Any:
    if not cfg.log.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=cfg.name, unit="step")
