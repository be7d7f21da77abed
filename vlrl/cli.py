"""The `vlrl` command: model building, generation, training, evaluation, tools, data, benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    parser = argparse.ArgumentParser(prog="vlrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="build model folders")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    tiny = model_sub.add_parser("tiny", help="write a tiny random Qwen2-VL folder (no download)")
    tiny.add_argument("--out", required=True, help="folder to write")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--arch", default="qwen2-vl", choices=["qwen2-vl", "qwen2.5-vl"])
    tiny.add_argument("--max-pixels", type=int, default=448 * 448,
                      help="largest image the processor passes (28 x 28 pixels per image token)")
    head = model_sub.add_parser("reward-head", help="a reward-model folder: a VLM with a classic scalar head "
                                                    "(e.g. a *ForSequenceClassification's score.weight) written in")
    head.add_argument("base", help="the VLM folder the head was trained on")
    head.add_argument("--head", required=True, help="a .safetensors file holding the head's weight (and bias)")
    head.add_argument("--key", default="score.weight", help="the weight's name in that file")
    head.add_argument("--out", required=True, help="folder to write")

    gen = sub.add_parser("generate", help="answer one question about one image with an engine")
    gen.add_argument("config", help="YAML config (see configs/generate.yaml)")
    gen.add_argument("overrides", nargs="*", help="dotted overrides, e.g. engine.kind=vllm sampling.temperature=0")

    tr_ = sub.add_parser("train", help="train a policy with RL (GRPO) on a task with tools")
    tr_.add_argument("config", help="YAML config (see configs/quickstart.yaml)")
    tr_.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=20 rollout.group_size=8 resume=PATH")

    ev = sub.add_parser("eval", help="pass@k, maj@k, best-of-k by self-verification (with and without the image) "
                                     "and by an external verifier, on N samples per question")
    ev.add_argument("config", help="YAML config (see configs/eval_quick.yaml)")
    ev.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.path=runs/latest/checkpoints/last/model "
                                                 "samples=16 env.tools=[]")
    ev.add_argument("--json", action="store_true", help="end with one JSON line of the figures")

    tools = sub.add_parser("tools", help="inspect tools")
    tools_sub = tools.add_subparsers(dest="tools_command", required=True)
    tl = tools_sub.add_parser("list", help="every tool with its JSON schema")
    tl.add_argument("refs", nargs="*", default=["chart_table_focus", "drawing"],
                    help="tool references: names, modules, .py files, entry points (default: the built-ins)")
    tl.add_argument("--json", action="store_true", help="print the schemas as one JSON list")
    tr = tools_sub.add_parser("run", help="run one action in the sandbox and print one JSON object")
    action = tr.add_mutually_exclusive_group(required=True)
    action.add_argument("--code", help="a Python file: calls tools on image_1, ... and display()s the result")
    action.add_argument("--call", help='a JSON tool call {"name": ..., "arguments": {...}} (or a .json file)')
    tr.add_argument("--image", action="append", required=True, help="an input image (repeat: image_1, image_2, ...)")
    tr.add_argument("--metadata", help="sample metadata as JSON, or a .json file (e.g. columns_bbox)")
    tr.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds")
    tr.add_argument("--out", default="tool-output", help="folder for the result images")
    tr.add_argument("--tools", nargs="*", default=["chart_table_focus", "drawing"], help="tool references")

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
    show = data_sub.add_parser("show", help="draw a contact sheet of samples with their boxes, questions, answers")
    show.add_argument("path", help="a dataset file or folder, a hub name, or a task name (e.g. synthetic_charts)")
    show.add_argument("--n", type=int, default=8)
    show.add_argument("--out", default="contact_sheet.png", help="PNG to write")
    show.add_argument("--format", default="auto", help="auto, chartqa, refocus or tablevqa (for a dataset path)")
    show.add_argument("--split", default="", help="split to read (default: the loader's)")
    show.add_argument("--seed", type=int, default=0)
    score = data_sub.add_parser("score", help="score a JSON-lines file of predictions with a reward")
    score.add_argument("--reward", required=True, help="chartqa_relaxed, chartqa_lenient, exact_match, ... or module:attr")
    score.add_argument("--pred", required=True, help='rows {"prediction": str, "answer": str | [str], "split"?: str}')
    score.add_argument("--json", action="store_true", help="end with one JSON line of the figures")

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    eng = bench_sub.add_parser("engine", help="engine throughput, start time, memory, logprob parity")
    eng.add_argument("--model", help="model folder (default: a tiny model built in a temp folder)")
    eng.add_argument("--engines", default="hf,vllm", help="comma-separated: hf,vllm")
    eng.add_argument("--quick", action="store_true", help="one repetition, one parity trajectory")
    eng.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    bt = bench_sub.add_parser("tools", help="sandboxed tool-call latency and throughput")
    bt.add_argument("--calls", type=int, default=200)
    bt.add_argument("--workers", type=int, default=2)
    bt.add_argument("--json", action="store_true", help="end with one JSON line of the figures")

    btr = bench_sub.add_parser("train", help="one GRPO step on the tiny model, phase by phase")
    btr.add_argument("--model", help="model folder (default: a tiny model built in a temp folder)")
    btr.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    btr.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    bo = bench_sub.add_parser("overlap", help="sync vs intra-step, inter-step and both overlaps on a long-tail "
                                              "workload")
    bo.add_argument("--model", help="model folder (default: a tiny model built in a temp folder)")
    bo.add_argument("--quick", action="store_true", help="5 measured steps per schedule instead of 10")
    bo.add_argument("--steps", type=int, help="measured steps per schedule (overrides --quick)")
    bo.add_argument("--keep", help="copy the runs (metrics, timeline.png / .json of each schedule) to this folder")
    bo.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    bs = bench_sub.add_parser("scale", help="rollout tokens/s over 1 and 2 Ray engine replicas, and the Ray layer's "
                                            "cost")
    bs.add_argument("--model", help="model folder (default: a tiny model built in a temp folder)")
    bs.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    bs.add_argument("--steps", type=int, default=4, help="steps per setup; the first warms up")
    bs.add_argument("--quick", action="store_true", help="2 prompts x 4 trajectories per step instead of 8 x 8")
    bs.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    bd = bench_sub.add_parser("data", help="synthetic samples per second, loader rows per second")
    bd.add_argument("--json", action="store_true", help="end with one JSON line of the figures")

    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args)
    except (ValueError, FileNotFoundError, LookupError) as e:  # bad input: say what and where, no traceback
        print(f"vlrl: error: {e}", file=sys.stderr)
        return 2


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "model" and args.model_command == "reward-head":
        from vlrl.rewards.head import write_reward_model

        print(f"wrote reward model to {write_reward_model(args.base, args.head, args.out, args.key)}")
    elif args.command == "model":
        from vlrl.model.tiny import build_tiny_model

        out = build_tiny_model(args.out, seed=args.seed, arch=args.arch, max_pixels=args.max_pixels)
        print(f"wrote tiny {args.arch} model to {out}")
    elif args.command == "generate":
        from vlrl.config import GenerateConfig, load_config

        cfg = load_config(GenerateConfig, args.config, args.overrides)  # before torch is imported: errors come fast
        from vlrl.generate import generate

        asyncio.run(generate(cfg))
    elif args.command == "train":
        from vlrl.config import TrainConfig, load_config
        from vlrl.distributed import TrainerRankLost

        cfg = load_config(TrainConfig, args.config, args.overrides)
        from vlrl.train import run_training

        try:
            run_training(cfg)
        except TrainerRankLost as e:
            print(f"vlrl: error: {e}", file=sys.stderr)
            return 1
    elif args.command == "eval":
        import json

        from vlrl.config import EvalConfig, load_config

        cfg = load_config(EvalConfig, args.config, args.overrides)
        from vlrl.eval.report import headline
        from vlrl.eval.run import evaluate

        report = asyncio.run(evaluate(cfg))
        figures = headline(report)
        for key in _eval_shown(report):
            if figures.get(key) is not None:
                print(f"  {key:28s} {figures[key]:.3f}")
        print(f"report: {Path(cfg.out) / 'report.md'}")
        if args.json:
            print(json.dumps(figures))
    elif args.command == "env":
        from vlrl.config import PlayConfig, load_config
        from vlrl.play import play

        config, overrides = args.config, list(args.overrides)
        if config is not None and "=" in config:  # only overrides were given
            config, overrides = None, [config, *overrides]
        flags = {"task.name": args.task, "agent": args.agent, "n": args.n, "out": args.out, "model.path": args.model,
                 "seed": args.seed}
        overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
        asyncio.run(play(load_config(PlayConfig, config, overrides)))
    elif args.command == "data" and args.data_command == "synth":
        from vlrl.synth import SynthSpec, parse_families, synthesize

        spec = SynthSpec(args.kind, args.seed, parse_families(args.families), args.difficulty)
        index = synthesize(spec, args.n, args.out, args.workers)
        print(f"wrote {args.n} {args.kind} samples to {index.parent} (index {index.name}; task: refocus)")
    elif args.command == "data" and args.data_command == "show":
        from vlrl.show import show

        show(args.path, args.n, args.out, args.format, args.split, args.seed)
    elif args.command == "data":
        from vlrl.score import print_report, score_file

        print_report(score_file(args.reward, args.pred), args.json)
    elif args.command == "tools" and args.tools_command == "list":
        from vlrl.tool import load_tools

        _list_tools(load_tools(args.refs), args.json)
    elif args.command == "tools":
        from vlrl.sandbox.run_one import main as run_one

        run_one(args)
    elif args.command == "bench" and args.bench_command == "train":
        from vlrl.bench.train import run as run_train_bench

        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(args.model) if args.model else _tiny(Path(tmp) / "tiny-vlm")
            run_train_bench(model_dir, args.engine, args.json)
    elif args.command == "bench" and args.bench_command == "overlap":
        from vlrl.bench.overlap import run as run_overlap_bench

        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(args.model) if args.model else _tiny(Path(tmp) / "tiny-vlm", max_pixels=12544)
            steps = args.steps or (5 if args.quick else 10)
            run_overlap_bench(model_dir, steps, args.json, Path(args.keep) if args.keep else None)
    elif args.command == "bench" and args.bench_command == "scale":
        from vlrl.bench.scale import run as run_scale_bench

        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(args.model) if args.model else _tiny(Path(tmp) / "tiny-vlm")
            run_scale_bench(model_dir, args.engine, args.steps, args.quick, args.json)
    elif args.command == "bench" and args.bench_command == "data":
        from vlrl.bench.data import run as run_data_bench

        run_data_bench(args.json)
    elif args.command == "bench" and args.bench_command == "tools":
        from vlrl.bench.tools import run as run_tools_bench

        run_tools_bench(args.calls, args.workers, args.json)
    elif args.command == "bench":
        from vlrl.bench.engine import run

        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        unknown = sorted(set(engines) - {"hf", "vllm"})
        if unknown:
            parser.error(f"unknown engine(s) {unknown}; choose from hf, vllm")
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(args.model) if args.model else _tiny(Path(tmp) / "tiny-vlm")
            run(model_dir, engines, args.quick, args.json)
    return 0


def _list_tools(tools: dict, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps([spec.schema for spec in tools.values()], indent=2))
        return
    for spec in tools.values():
        props = spec.parameters["properties"]
        required = set(spec.parameters["required"])
        args = ", ".join(f"{n}{'' if n in required else '?'}: {p.get('type', 'any')}" for n, p in props.items())
        bound = ", ".join(f"{p} <- metadata[{k!r}]" for p, k in spec.metadata_params.items())
        print(f"{spec.name}({args})" + (f"   [{bound}]" if bound else ""))
        print(f"    {spec.description}")


def _eval_shown(report: dict) -> list[str]:
    """The figures printed at the end of `vlrl eval`: greedy, mean, and the largest k's."""
    k = report["ks"][-1]
    return ["greedy_accuracy", "mean_accuracy", f"pass@{k}", f"maj@{k}",
            *(f"bestof@{k}_{j}" for j in report["judges"]),
            *(f"verifier_auroc_{c}" for c in ("image", "noimage", "external")), "questions_per_minute"]


def _tiny(out: Path, **kwargs: int) -> Path:
    from vlrl.model.tiny import build_tiny_model

    return build_tiny_model(out, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
