"""`vlrl plan [calibrate]`: the scheduler's twin. Predict every schedule's step on a workload, recommend a setting,
check the twin against measured runs (``--validate``), or measure this machine's costs (``calibrate``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlrl.commands import with_model

TINY_PIXELS = 12544  # the tiny model `vlrl bench overlap` builds, so a calibration matches its runs


def add_to(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="the scheduler's twin: predicted step times on a simulated clock")
    plan.add_argument("action", nargs="?", choices=["calibrate"], help="calibrate: measure this machine's costs")
    plan.add_argument("--costs", default="runs/plan/costs.json",
                      help="cost file (`vlrl plan calibrate` writes it; default %(default)s)")
    plan.add_argument("--preset", help="project to a GPU setup from published figures instead of a cost file "
                                       "(qwen2.5-vl-7b-8xh100), at its recipe's batch")
    plan.add_argument("--groups", type=int, help="with --preset: prompts per step instead of the recipe's (a "
                                                 "quicker, smaller projection)")
    plan.add_argument("--workload", default="longtail-cot", help="a `vlrl bench overlap` workload (its teacher's "
                                                                 "lengths)")
    plan.add_argument("--lengths", help="a `vlrl train` run directory: draw lengths from its trained trajectories")
    plan.add_argument("--steps", type=int, default=10, help="simulated steps per schedule, after 1 warm-up")
    plan.add_argument("--max-tokens", type=int, help="a turn's token cap, the workload's lengths scaled to it (their "
                                                     "shape kept; default: the workload's own cap, with --preset the "
                                                     "recipe's max_response_length)")
    plan.add_argument("--validate", metavar="RUNS", help="a `vlrl bench overlap --keep` folder: measured vs "
                                                          "predicted step time of each run in it")
    plan.add_argument("--fit", metavar="RUNS", help="a folder of `vlrl train` runs of the HF engine (`vlrl bench "
                                                    "overlap --keep`): the engine's and the update's costs fitted to "
                                                    "what they measured themselves, over --costs; with --validate of "
                                                    "the same folder, each run is predicted from the others")
    plan.add_argument("--model", help="model folder whose tokenizer the verifier uses (calibrate: the model it "
                                      "measures; default: a tiny model built in a temp folder)")
    plan.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    plan.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.action == "calibrate":
        return with_model(args.model, lambda model: calibrate(model, Path(args.costs)), max_pixels=TINY_PIXELS)
    from vlrl.plan.costs import load

    if args.preset:
        if args.validate or args.fit:
            raise ValueError("--validate and --fit read runs measured on this machine: give --costs, not --preset")
        return with_model(args.model, lambda model: predict(args, None, model), max_pixels=TINY_PIXELS)
    placements = load(args.costs)
    fit = Path(args.fit) if args.fit else None
    if args.validate:
        return with_model(args.model, lambda model: validate(Path(args.validate), placements, model, args.json, fit),
                          max_pixels=TINY_PIXELS)
    return with_model(args.model, lambda model: predict(args, placements, model), max_pixels=TINY_PIXELS)


def calibrate(model: Path, out: Path) -> int:
    from vlrl.plan.calibrate import calibrate as measure
    from vlrl.plan.costs import save

    placements = measure(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(placements, out)
    for name, costs in placements.items():
        print(f"{name:13s} decode {1000 * costs.decode_base_s:.2f} ms + {1000 * costs.decode_per_request_s:.3f} ms "
              f"per request + {1e6 * costs.decode_per_context_token_s:.3f} us per context token; prefill "
              f"{1e6 * costs.prefill_per_token_s:.1f} us/token + {1000 * costs.prefill_per_image_s:.1f} ms/image; "
              f"the batch's cache rebuilt {1e9 * costs.cache_per_position_s:.0f} ns/position; "
              f"tool {1000 * costs.tool_s:.0f} ms; update {costs.update_base_s:.2f} s + "
              f"{1e6 * costs.update_per_token_s:.1f} us/position; sync {1000 * costs.sync_s:.0f} ms; a rollout "
              f"{costs.rollout_factor:.2f}x its engine's time; an update "
              f"{costs.update_contention:.2f}x its own beside the engine decoding")
    print(f"written to {out}")
    return 0


def predict(args: argparse.Namespace, placements: Any, model: Path) -> int:
    """Every schedule's predicted step, and the recommended setting; costs from ``placements`` or ``--preset``."""
    from dataclasses import replace

    from vlrl.bench.overlap import AHEAD, GROUP_SIZE, GROUPS, speedup_key
    from vlrl.plan import report
    from vlrl.plan.presets import preset as preset_named
    from vlrl.plan.workloads import from_run, named

    workload = from_run(args.lengths) if args.lengths else named(args.workload)
    preset = preset_named(args.preset) if args.preset else None
    if preset is not None and args.groups is not None:
        if args.groups < 1:
            raise ValueError(f"--groups must be >= 1, got {args.groups}")
        preset = replace(preset, groups=args.groups)
    if preset is not None:
        placements = preset.placements(args.preset)
        workload = replace(workload, prompt_tokens=preset.prompt_tokens, observation_tokens=preset.observation_tokens)
    cap = args.max_tokens if args.max_tokens is not None else (preset.response_cap if preset else workload.max_tokens)
    workload = workload.scaled(cap)
    tokenizer, eos = _tokenizer(model)
    if args.fit:
        placements = report.fitted_to(Path(args.fit), placements, tokenizer, eos)
    results = report.schedules(placements, workload, args.steps, tokenizer, eos, preset)
    base = results["sync"]["step_s"]
    costs = f"preset {args.preset}, a projection" if preset else f"costs: {args.costs}" + (
        f", fitted to {args.fit}" if args.fit else "")
    batch = f"{preset.groups} groups x {preset.group_size}" if preset else f"{GROUPS} groups x {GROUP_SIZE}"
    print(f"predicted by the twin ({workload.source}; {costs}; {batch}), mean of {args.steps} steps after 1:")
    print("schedule      | step s | rollout s | update s | speedup | busy | bubble | staleness")
    for name, r in results.items():
        print(f"{name:13s} | {r['step_s']:6.2f} | {r['rollout_s']:9.2f} | {r['update_s']:8.2f} | "
              f"{base / r['step_s']:6.2f}x | {r['busy']:4.2f} | {r['bubble']:6.2f} | {r['staleness']:9.2f}")
    best = report.recommend(placements, workload, args.steps, tokenizer, eos, preset)
    print(f"recommended: {best['placement']}, extra_groups {best['extra_groups']}, verifier.chunk_tokens "
          f"{best['chunk_tokens']}, decode_during_update {str(best['decode_during_update']).lower()}: "
          f"{best['step_s']:.2f} s per step, {base / best['step_s']:.2f}x over sync")
    if args.json:
        slots = best["slots"] if preset else (GROUPS + AHEAD) * GROUP_SIZE
        efficiency = report.efficiency(best, placements[best["placement"]], slots)
        print(json.dumps({**{speedup_key(n): round(base / r["step_s"], 3)
                             for n, r in results.items() if n != "sync"},
                          "efficiency_best": round(efficiency, 3),
                          "recommended": {k: best[k] for k in ("placement", "extra_groups", "chunk_tokens",
                                                               "decode_during_update", "slots")}}))
    return 0


def validate(runs: Path, placements: Any, model: Path, as_json: bool, fit: Path | None) -> int:
    from vlrl.plan.report import validate as cases_of

    tokenizer, eos = _tokenizer(model)
    cases = cases_of(runs, placements, tokenizer, eos, fit)
    if fit is not None:
        print(f"costs fitted to the runs in {fit}" + (", each run predicted from the others" if fit == runs else ""))
    print("run                                   | placement     | measured s | predicted s | error | rollout s "
          "measured / predicted | update s measured / predicted")
    for c in cases:
        print(f"{c['run']:37s} | {c['placement']:13s} | {c['measured_s']:10.2f} | {c['predicted_s']:11.2f} | "
              f"{100 * c['rel_error']:4.0f}% | {c['measured_rollout_s']:15.2f} / {c['predicted_rollout_s']:5.2f} | "
              f"{c['measured_update_s']:14.2f} / {c['predicted_update_s']:5.2f}")
    engine = [c for c in cases if "measured_engine_busy_s" in c]
    if engine:  # the engine's own seconds a step: where the rollout's time went, and where the twin differs
        print("run                                   | engine busy s measured / predicted | decode s    | prefill s   "
              "| cache s")
        for c in engine:
            print(f"{c['run']:37s} | {c['measured_engine_busy_s']:22.2f} / {c['predicted_engine_busy_s']:9.2f} | "
                  + " | ".join(f"{c[f'measured_engine_{n}']:4.2f} / {c[f'predicted_engine_{n}']:4.2f}"
                               for n in ("decode_s", "prefill_s", "cache_s")))
    errors = [c["rel_error"] for c in cases]
    figures = {"cases": len(cases), "max_rel_error": round(max(errors), 3),
               "mean_rel_error": round(sum(errors) / len(errors), 3)}
    print(f"the twin is within {100 * figures['max_rel_error']:.0f}% of every measured step time "
          f"(mean {100 * figures['mean_rel_error']:.0f}%)")
    if as_json:
        print(json.dumps(figures))
    return 0


def _tokenizer(model: Path) -> tuple[Any, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>")
