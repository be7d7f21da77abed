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
    ev.add_argument("--compare", nargs="+", metavar="MODEL", default=None,
                    help="evaluate each of these model folders (instead of model.path) on the same questions and "
                         "seeds, into OUT/<k>-<name>/, and compare them to the first in OUT/compare.md / .json / .png")
    ev.add_argument("--names", nargs="+", default=None, help="with --compare: a name per model (default: the "
                                                              "shortest trailing parts of their paths that differ)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(EvalConfig, args.config, args.overrides)
    if args.compare or args.names:
        return compare(args, cfg)
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


def compare(args: argparse.Namespace, cfg: EvalConfig) -> int:
    """`vlrl eval --compare`: each model evaluated with the config's settings, then side by side."""
    from vlrl.eval.compare import compare_models, default_names, markdown, write_comparison
    from vlrl.eval.run import evaluate, read_results

    if not args.compare:
        raise ValueError("--names goes with --compare MODEL [MODEL ...]")
    names = args.names or default_names(args.compare)
    if len(names) != len(args.compare) or len(set(names)) != len(names):
        raise ValueError(f"--names must give {len(args.compare)} distinct names, one per model, got {names}")
    out, results = Path(cfg.out), {}
    for k, (name, path) in enumerate(zip(names, args.compare)):
        folder = out / f"{k}-{name.replace('/', '_')}"
        one = load_config(EvalConfig, args.config, [*args.overrides, f"model.path={path}", f"out={folder}"])
        print(f"eval --compare: {name} ({path})", flush=True)
        asyncio.run(evaluate(one))
        results[name] = [r for r in read_results(Path(one.out)) if r["index"] < one.questions]
    result = compare_models(results, cfg)
    write_comparison(out, result)
    print(markdown(result))
    print(f"comparison: {out / 'compare.md'} (compare.json, compare.png)")
    if args.json:
        print(json.dumps({figure: row["values"] for figure, row in result["figures"].items()}))
    return 0


def shown(report: dict[str, Any]) -> list[str]:
    """The figures printed at the end of `vlrl eval`: greedy, mean, and the largest k's."""
    k = report["ks"][-1]
    return ["greedy_accuracy", "mean_accuracy", f"pass@{k}", f"maj@{k}",
            *(f"bestof@{k}_{j}" for j in report["judges"]),
            *(f"verifier_auroc_{c}" for c in ("image", "noimage", "external")), "questions_per_minute"]
