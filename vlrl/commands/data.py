"""`vlrl data synth | show | check | score`: write a synthetic dataset, draw a contact sheet, check a file, score
predictions."""

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
    check = data_sub.add_parser("check", help="read every row of a dataset: rows skipped by reason, box fields, "
                                               "boxes clamped (run it before training on a new file)")
    check.add_argument("path", help="a dataset file or folder, or a hub name")
    check.add_argument("--format", default="auto", help="auto, chartqa, refocus or tablevqa")
    check.add_argument("--split", default="", help="split to read (default: the loader's)")
    check.add_argument("--tool-binding", choices=["vlrl", "vtool"], default="",
                       help="refocus only: 'vtool' also gives a bar chart's value boxes as columns and rows")
    check.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    check.set_defaults(run=run_check)
    score = data_sub.add_parser("score", help="score a JSON-lines file of predictions with a reward")
    score.add_argument("--reward", default="chartqa_relaxed",
                       help="chartqa_relaxed, chartqa_lenient, exact_match, ... or module:attr")
    score.add_argument("--pred", required=True, help='rows {"prediction": str, "answer": str | [str], "split"?: str}')
    score.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    score.add_argument("--judge", default="", help="a model folder that grades each answer against the truth (rows "
                                                   "need 'question'); its verdict is the score, --reward unused")
    score.add_argument("--judge-prompt", default="", help="the judge's Jinja prompt file (default: vlrl's)")
    score.add_argument("--judge-verdict", choices=["generate", "p_yes"], default="generate")
    score.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="the judge's engine")
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


def run_check(args: argparse.Namespace) -> int:
    from vlrl.data.check import check, print_report

    loader_args = {"tool_binding": args.tool_binding} if args.tool_binding else {}
    print_report(check(args.path, args.format, args.split, **loader_args), args.json)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from vlrl.data.score import print_report, score_file

    grade = None
    if args.judge:
        import asyncio

        from vlrl.config import EngineConfig, RewardJudgeConfig
        from vlrl.eval.judges import judge_rows

        cfg = RewardJudgeConfig(model=args.judge, prompt=args.judge_prompt, verdict=args.judge_verdict)
        grade = lambda rows: asyncio.run(judge_rows(cfg, EngineConfig(args.engine), rows))  # noqa: E731
    print_report(score_file(args.reward, args.pred, grade), args.json)
    return 0
