"""`vlrl bench engine | tools | train | overlap | scale | data | memory`: benchmarks that print figures (and one JSON line)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from vlrl.commands import with_model

ENGINES = ("hf", "vllm")


def add_to(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    eng = _bench(bench_sub, "engine", "engine throughput, start time, memory, logprob parity", run_engine, model=True)
    eng.add_argument("--engines", default="hf,vllm", help="comma-separated: hf,vllm")
    eng.add_argument("--quick", action="store_true", help="one repetition, one parity trajectory")
    eng.add_argument("--concurrency", help="comma-separated numbers of concurrent requests (default: 1,8,32)")
    eng.add_argument("--device", default="cpu", help="where the HF engine and the trainer's model run (cpu, cuda)")
    eng.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                     help="the engine's and the trainer's weights and compute")
    tools = _bench(bench_sub, "tools", "sandboxed tool-call latency and throughput", run_tools)
    tools.add_argument("--calls", type=int, default=200)
    tools.add_argument("--workers", type=int, default=2)
    train = _bench(bench_sub, "train", "one GRPO step on the tiny model, phase by phase", run_train, model=True)
    train.add_argument("--engine", default="hf", choices=ENGINES)
    overlap = _bench(bench_sub, "overlap", "sync vs every overlap schedule on a long-tail workload", run_overlap,
                     model=True)
    overlap.add_argument("--workload", default="longtail-cot", choices=("longtail-cot", "longtail-charts"),
                         help="what the policy writes (see vlrl/bench/overlap.py)")
    overlap.add_argument("--schedules", help="comma-separated, sync first (default: all: sync, intra, inter, "
                                             "intra+inter, sync-split, disaggregated)")
    overlap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                         help="where the policy, its engine and the trainer run (cuda: scripts/gpu_overlap.sh)")
    overlap.add_argument("--quick", action="store_true", help="5 measured steps per schedule instead of 10")
    overlap.add_argument("--steps", type=int, help="measured steps per schedule (overrides --quick)")
    overlap.add_argument("--keep", help="copy the runs (metrics, timeline.png / .json of each schedule) to this folder")
    overlap.add_argument("--repeat", type=int, default=1, help="rounds of every schedule: each speedup is over its "
                                                               "round's sync, reported as the mean and range")
    scale = _bench(bench_sub, "scale", "rollout tokens/s over 1 and 2 Ray engine replicas, and the Ray layer's cost",
                   run_scale, model=True)
    scale.add_argument("--engine", default="hf", choices=ENGINES)
    scale.add_argument("--steps", type=int, default=4, help="steps per setup; the first warms up")
    scale.add_argument("--quick", action="store_true", help="2 prompts x 4 trajectories per step instead of 8 x 8")
    _bench(bench_sub, "data", "synthetic samples per second, loader rows per second", run_data)
    memory = _bench(bench_sub, "memory", "peak memory of a trainer step and a logprob forward at 2k-16k tokens with "
                                         "4 images, tokens/s, the HF engine's KV cache per 1k tokens", run_memory,
                    model=True)
    memory.add_argument("--shape", default="qwen2.5-vl-7b",
                        help="the tiny model's shape (vlrl model tiny --shape) when --model is not given")
    memory.add_argument("--lengths", help="comma-separated trajectory lengths (default: 2048,4096,8192,16384)")
    memory.add_argument("--device", default="cpu", help="cpu: peak resident memory; cuda: peak GPU memory allocated")


def _bench(sub: argparse._SubParsersAction, name: str, what: str, run: Callable[[argparse.Namespace], int],
           model: bool = False) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=what)
    if model:
        parser.add_argument("--model", help="model folder (default: a tiny model built in a temp folder)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    parser.set_defaults(run=run)
    return parser


def run_engine(args: argparse.Namespace) -> int:
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    from vlrl.bench.engine import CONCURRENCY, run

    concurrency = positive_ints(args.concurrency, "--concurrency") if args.concurrency else CONCURRENCY
    return _with_model(args, lambda model: run(model, engines, args.quick, args.json, concurrency, args.device,
                                               args.dtype))


def run_tools(args: argparse.Namespace) -> int:
    from vlrl.bench.tools import run

    run(args.calls, args.workers, args.json)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from vlrl.bench.train import run

    return _with_model(args, lambda model: run(model, args.engine, args.json))


def run_overlap(args: argparse.Namespace) -> int:
    from vlrl.bench.overlap import SCHEDULES, run

    steps = args.steps or (5 if args.quick else 10)
    keep = Path(args.keep) if args.keep else None
    schedules = tuple(s.strip() for s in args.schedules.split(",")) if args.schedules else tuple(SCHEDULES)
    return _with_model(args, lambda model: run(model, args.workload, steps, args.json, keep, schedules, args.device,
                                               args.repeat), max_pixels=12544)


def run_scale(args: argparse.Namespace) -> int:
    from vlrl.bench.scale import run

    return _with_model(args, lambda model: run(model, args.engine, args.steps, args.quick, args.json))


def run_data(args: argparse.Namespace) -> int:
    from vlrl.bench.data import run

    run(args.json)
    return 0


def run_memory(args: argparse.Namespace) -> int:
    from vlrl.bench.memory import LENGTHS, run

    lengths = positive_ints(args.lengths, "--lengths") if args.lengths else LENGTHS
    shape = None if args.model else args.shape
    return _with_model(args, lambda model: run(model, shape, lengths, args.json, args.device), shape=shape)


def positive_ints(text: str, flag: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``; anything else is named with its flag."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values


def _with_model(args: argparse.Namespace, bench: Callable[[Path], Any], **tiny: Any) -> int:
    """``bench`` on ``--model`` or on a tiny model built for the run; the exit status."""
    with_model(args.model, bench, **tiny)
    return 0
