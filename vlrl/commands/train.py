"""`vlrl train`: the RL recipe (``vlrl.recipes.train``) on a config."""

from __future__ import annotations

import argparse
import sys

from vlrl.commands import config_command
from vlrl.config import TrainConfig, load_config


def add_to(sub: argparse._SubParsersAction) -> None:
    config_command(sub, "train", "train a policy with RL (GRPO or PPO) on a task with tools", "configs/quickstart.yaml",
                   "steps=20 rollout.group_size=8 resume=PATH", run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(TrainConfig, args.config, args.overrides)  # before torch is imported: errors come fast
    from vlrl.engines.base import PartLost
    from vlrl.recipes.train import run_training

    try:
        run_training(cfg)
    except PartLost as e:
        print(f"vlrl: error: {e}", file=sys.stderr)
        return 1
    return 0
