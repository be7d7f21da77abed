"""`vlrl compare`: two sweeps side by side, seed by seed and question by question (``vlrl.recipes.compare``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_to(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("compare", help="two `vlrl sweep` folders (arms) side by side: held-out accuracy per seed "
                                            "with paired intervals, the mean over seeds, tool-call rate over training")
    parser.add_argument("a", type=Path, help="the --out of one sweep (differences are this one minus the other)")
    parser.add_argument("b", type=Path, help="the --out of the other, run with the same seeds and held-out questions")
    parser.add_argument("--out", type=Path, default=None, help="where compare.json / .md / .png go (default: A/..)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlrl.recipes.compare import compare_sweeps

    out = args.out or args.a.resolve().parent
    result = compare_sweeps(args.a, args.b, out)
    print((out / "compare.md").read_text())
    if result["only_in_one_arm"]:
        print(f"seeds left out (run in one arm only): {result['only_in_one_arm']}")
    print(f"written to {out} (compare.json, compare.md, compare.png)")
    return 0
