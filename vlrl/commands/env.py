"""`vlrl env play`: (task, environment, model-free agent) --> transcripts and images on disk."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from vlrl.config import PlayConfig, load_config

if TYPE_CHECKING:
    from vlrl.types import Trajectory


def add_to(sub: argparse._SubParsersAction) -> None:
    env = sub.add_parser("env", help="try an environment without a model")
    env_sub = env.add_subparsers(dest="env_command", required=True)
    play = env_sub.add_parser("play", help="run episodes with a scripted or random agent; write transcripts")
    play.add_argument("config", nargs="?", help="YAML with model / env / task / agent sections (optional)")
    play.add_argument("overrides", nargs="*", help="dotted overrides, e.g. env.action_formats=[code]")
    play.add_argument("--task", help="task name, entry point or module:attr (default synthetic_charts)")
    play.add_argument("--agent", help="scripted | random | module:attr")
    play.add_argument("--n", type=int, help="episodes (default 5)")
    play.add_argument("--out", help="output folder (default runs/play)")
    play.add_argument("--model", help="model folder whose tokenizer and chat template to use")
    play.add_argument("--seed", type=int)
    play.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # only overrides were given
        config, overrides = None, [config, *overrides]
    flags = {"task.name": args.task, "agent": args.agent, "n": args.n, "out": args.out, "model.path": args.model,
             "seed": args.seed}
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    asyncio.run(play(load_config(PlayConfig, config, overrides)))
    return 0


async def play(cfg: PlayConfig) -> list[Trajectory]:
    """Run ``cfg.n`` episodes and write ``cfg.out/episode-K/`` (transcript.md, images, trajectory.json)."""
    from transformers import AutoTokenizer

    from vlrl.engines.base import check_model_dir
    from vlrl.env import make_env
    from vlrl.registry import resolve
    from vlrl.rollout.play import play_episode, write_episode
    from vlrl.task import open_task
    from vlrl.vision import VisionInputs

    model_dir = check_model_dir(cfg.model.path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vision = VisionInputs(model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    agent = resolve("agent", cfg.agent)(seed=cfg.seed)
    source, _ = open_task(cfg.task, cfg.seed)
    samples = list(islice(source, cfg.n))
    if not samples:
        raise ValueError(f"task {cfg.task.name!r} gave no samples")
    out = Path(cfg.out)
    trajectories = []
    async with make_env(cfg.env, tokenizer, vision) as env:
        for k, sample in enumerate(samples):
            episode = await play_episode(env, tokenizer, agent, sample, f"{sample.id}-play{k}")
            write_episode(episode, out / f"episode-{k}")
            traj = episode.trajectory
            trajectories.append(traj)
            print(f"episode {k} ({sample.id}): {traj.turns} turn(s), finish={traj.finish_reason}, "
                  f"answer={traj.answer!r} (expected {sample.answers[0]!r}), tools {traj.tool_stats()}")
    summary = {"episodes": len(trajectories), "finish": dict(Counter(t.finish_reason for t in trajectories)),
               **{k: sum(t.tool_stats()[k] for t in trajectories) for k in trajectories[0].tool_stats()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(trajectories)} episode(s) to {out}: {summary}")
    return trajectories
