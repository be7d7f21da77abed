"""Issue 24's GPU check (run by scripts/gpu_check.sh; `--device cpu --quick` runs the same path here).

On a qwen2.5-vl-7b-shaped tiny model (the real 151,936-row vocabulary and vision patching): (1) engine/trainer
logprob parity on two-image tool trajectories with the HF engine and the trainer on the device, in float32 and in
bfloat16, with the engine's tokens/s at 1, 8 and 64 requests; (2) GRPO steps after a short warm start on the
teacher, every step's update timed; (3) `vlrl bench memory --device`. Each step is a `vlrl` command whose output
is kept in OUT/<step>.log; the figures are printed and written to OUT/gpu_check.json, the last line is that JSON.
The exit status is 1 when a step failed or a check did not hold (float32 parity mean below 1e-3, bfloat16 below
2e-2: the stated tolerance of `optim.autocast`), with the reason printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARITY_TOLERANCE = {"float32": 1e-3, "bfloat16": 2e-2}  # mean |trainer - engine| logprob, nats


def vlrl(out: Path, step: str, *args: str) -> tuple[list[str], float]:
    """``vlrl ARGS`` with its output in OUT/STEP.log; its lines and seconds. A failure raises with the log's tail."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vlrl.cli", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    (out / f"{step}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"{step}: `vlrl {' '.join(args)}` exited {proc.returncode} after {seconds:.0f} s:\n{tail}")
    print(f"[{step}] {seconds:.0f} s", flush=True)
    return proc.stdout.splitlines(), seconds


def last_json(lines: list[str]) -> dict[str, Any]:
    return json.loads(next(line for line in reversed(lines) if line.startswith("{")))


def machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    card = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    return {"device": device, "card": card, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def parity(out: Path, model: Path, device: str, dtype: str, concurrency: str) -> dict[str, Any]:
    lines, _ = vlrl(out, f"parity-{dtype}", "bench", "engine", "--model", str(model), "--engines", "hf", "--quick",
                    "--device", device, "--dtype", dtype, "--concurrency", concurrency, "--json")
    figures = last_json(lines)
    return {"mean_abs": figures["parity_hf_mean_abs"], "max_abs": figures["parity_hf_max_abs"],
            "engine_tokens_per_s": figures["hf_tokens_per_s"], "engine_start_s": figures["hf_start_s"]}


def grpo(out: Path, model: Path, device: str, quick: bool) -> dict[str, Any]:
    steps, prompts = (2, 2) if quick else (5, 16)
    warm = ["warmstart.samples=16", "warmstart.steps=2"] if quick else ["warmstart.samples=256", "warmstart.steps=40"]
    vlrl(out, "grpo", "train", "configs/quickstart.yaml", f"model.path={model}", f"model.device={device}",
         f"engine.device={device}", f"steps={steps}", f"rollout.prompts_per_step={prompts}", *warm,
         "algo.drop_uniform_groups=false", "heldout.samples=0", "log.progress=false", "log.plots_every=0",
         f"log.dir={out / 'runs'}", "log.transcripts_every=0")
    run = out / "runs" / "latest"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    return {"steps": len(metrics), "step_s": [round(m["perf/step_s"], 2) for m in metrics],
            "update_s": [round(m["perf/update_s"], 2) for m in metrics],
            "rollout_tokens_per_s": [round(m["perf/tokens_per_s"], 1) for m in metrics],
            "reward": [round(m["reward/mean"], 3) for m in metrics], "groups": summary["groups"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check")
    parser.add_argument("--quick", action="store_true", help="fewer requests, steps and lengths (a CPU's pace)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(args.device)}
    failures = []
    print(json.dumps(report["machine"]), flush=True)
    model = out / "qwen2.5-vl-7b"
    concurrency = "1,4" if args.quick else "1,8,64"
    checks = {
        "parity_float32": lambda: parity(out, model, args.device, "float32", concurrency),
        "parity_bfloat16": lambda: parity(out, model, args.device, "bfloat16", concurrency),
        "grpo": lambda: grpo(out, model, args.device, args.quick),
        "memory": lambda: last_json(vlrl(out, "memory", "bench", "memory", "--model", str(model), "--device",
                                         args.device, "--json", *(["--lengths", "2048"] if args.quick else []))[0]),
    }
    try:
        vlrl(out, "model", "model", "tiny", "--shape", "qwen2.5-vl-7b", "--out", str(model))
    except RuntimeError as e:
        checks, failures = {}, [str(e)]
    for name, check in checks.items():
        try:
            report[name] = check()
        except (RuntimeError, KeyError, ValueError, StopIteration) as e:
            failures.append(f"{name}: {e}")
    for dtype, tolerance in PARITY_TOLERANCE.items():
        figures = report.get(f"parity_{dtype}")
        if figures and not figures["mean_abs"] < tolerance:
            failures.append(f"parity in {dtype}: mean |d| {figures['mean_abs']:.2e} is not below {tolerance:.0e}")
    if "grpo" in report and not all(s > 0 for s in report["grpo"]["update_s"]):
        failures.append(f"grpo: a step made no update (update_s {report['grpo']['update_s']})")
    if "memory" in report and None in report["memory"]["trainer_peak_gb"].values():
        failures.append(f"memory: a trainer step failed ({out / 'memory.log'})")
    report["failures"] = failures
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(json.dumps(report))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
