"""`vlrl sweep`: a `vlrl train` config over several seeds (``vlrl.recipes.sweep``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlrl.config import TrainConfig, load_config


def add_to(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="train a config once per seed; each task's held-out figures per seed, "
                                          "their mean and 95%% interval")
    parser.add_argument("config", help="YAML config of `vlrl train` (see configs/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. steps=20")
    parser.add_argument("--seeds", default="0-4", help="FIRST-LAST or a comma-separated list (default 0-4)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1: one after another)")
    parser.add_argument("--out", default="runs/sweep", help="seed-S/ run folders, their logs, sweep.json / .md")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlrl.recipes.sweep import parse_seeds, run_sweep

    seeds = parse_seeds(args.seeds)
    load_config(TrainConfig, args.config, args.overrides)  # a bad config fails here, not once per seed
    sweep = run_sweep(args.config, args.overrides, seeds, Path(args.out), args.parallel)
    return 1 if sweep["failed"] else 0
