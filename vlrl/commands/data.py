"""`vlrl data synth | show | score`: write a synthetic dataset, draw a contact sheet, score predictions."""

from __future__ import annotations

import argparse


def add_to(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets and scoring")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write a synthetic chart or table dataset (images + parquet index)")
    synth.add_argument("--kind", required=True, choices=["chart", "table"])
    synth.add_argument("--n", type=int, required=True, help="samples to write")
    synth.add_argument("--out", required=True, help="folder to write (images/ and data.parquet)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--families", nargs="*", help="question families (default: all nine)")
    synth.add_argument("--difficulty", choices=["easy", "medium", "hard"], help="default: a mix of the three")
    synth.add_argument("--workers", type=int, default=1, help="processes")
    synth.set_defaults(run=run_synth)
    show = data_sub.add_parser("show", help="draw a contact sheet of samples with their boxes, questions, answers")
    show.add_argument("path", help="a dataset file or folder, a hub name, or a task name (e.g. synthetic_charts)")
    show.add_argument("--n", type=int, default=8)
    show.add_argument("--out", default="contact_sheet.png", help="PNG to write")
    show.add_argument("--format", default="auto", help="auto, chartqa, refocus or tablevqa (for a dataset path)")
    show.add_argument("--split", default="", help="split to read (default: the loader's)")
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(run=run_show)
    score = data_sub.add_parser("score", help="score a JSON-lines file of predictions with a reward")
    score.add_argument("--reward", required=True,
                       help="chartqa_relaxed, chartqa_lenient, exact_match, ... or module:attr")
    score.add_argument("--pred", required=True, help='rows {"prediction": str, "answer": str | [str], "split"?: str}')
    score.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    score.set_defaults(run=run_score)


def run_synth(args: argparse.Namespace) -> int:
    from vlrl.config import TaskConfig
    from vlrl.data.synth import SYNTHETIC, synthesize

    task_args = {"workers": args.workers}
    if args.families:  # names separated by spaces or commas
        task_args["families"] = [f for item in args.families for f in item.split(",") if f]
    if args.difficulty:
        task_args["difficulty"] = args.difficulty
    index = synthesize(TaskConfig(SYNTHETIC[args.kind], task_args), args.seed, args.n, args.out)
    print(f"wrote {args.n} {args.kind} samples to {index.parent} (index {index.name}; task: refocus)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from vlrl.data.sheet import show

    show(args.path, args.n, args.out, args.format, args.split, args.seed)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from vlrl.data.score import print_report, score_file

    print_report(score_file(args.reward, args.pred), args.json)
    return 0
