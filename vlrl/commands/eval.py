"""`vlrl eval`: N samples per question, voted and verified (``vlrl.eval.run``), with the headline figures."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from vlrl.commands import config_command
from vlrl.config import EvalConfig, load_config


def add_to(sub: argparse._SubParsersAction) -> None:
    ev = config_command(sub, "eval", "pass@k, maj@k, best-of-k by self-verification (with and without the image) "
                        "and by an external verifier, on N samples per question", "configs/eval_quick.yaml",
                        "model.path=runs/latest/checkpoints/last/model samples=16 env.tools=[]", run)
    ev.add_argument("--json", action="store_true", help="end with one JSON line of the figures")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(EvalConfig, args.config, args.overrides)
    from vlrl.eval.report import headline
    from vlrl.eval.run import evaluate

    report = asyncio.run(evaluate(cfg))
    figures = headline(report)
    for key in shown(report):
        if figures.get(key) is not None:
            print(f"  {key:28s} {figures[key]:.3f}")
    print(f"report: {Path(cfg.out) / 'report.md'}")
    if args.json:
        print(json.dumps(figures))
    return 0


def shown(report: dict[str, Any]) -> list[str]:
    """The figures printed at the end of `vlrl eval`: greedy, mean, and the largest k's."""
    k = report["ks"][-1]
    return ["greedy_accuracy", "mean_accuracy", f"pass@{k}", f"maj@{k}",
            *(f"bestof@{k}_{j}" for j in report["judges"]),
            *(f"verifier_auroc_{c}" for c in ("image", "noimage", "external")), "questions_per_minute"]
