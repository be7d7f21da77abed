"""The quickstart under sync, overlap and the disaggregated mode, several seeds each: held-out accuracy per task.

Asks whether the overlap scheduler's staleness (deferred groups, decoding through the update) costs accuracy:
each schedule's mean and spread over the seeds, per task, against sync's. Runs one after another (about 7
minutes each on 2 vCPUs); give it an idle machine, since load changes the runs (issue 25).

    .venv/bin/python scripts/convergence.py --seeds 0 1 2 --out runs/convergence
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SCHEDULES = {
    "sync": [],
    "overlap": ["rollout.schedule=overlap", "rollout.extra_groups=4"],
    "disaggregated": ["rollout.schedule=overlap", "rollout.extra_groups=16", "rollout.decode_during_update=true",
                      "distributed.backend=ray", "engine.replicas=1", "engine.replica_resources={CPU: 1}",
                      "distributed.trainer_threads=1"],
}
FIELDS = ("overall", "synthetic_charts", "synthetic_tables")


def run(schedule: str, seed: int, model: Path, out: Path) -> dict:
    """One quickstart run in ``out/SCHEDULE-sSEED/`` (skipped when it has finished); its held-out RL accuracy overall and per task."""
    root = out / f"{schedule}-s{seed}"
    if not list(root.glob("*/summary.json")):
        subprocess.run([str(Path(sys.executable).parent / "vlrl"), "train", "configs/quickstart.yaml",
                        f"model.path={model}", f"seed={seed}", f"log.dir={root}", "log.progress=false",
                        *SCHEDULES[schedule]], check=True)
    folder = max(root.glob("*/summary.json")).parent
    data = json.loads((folder / "summary.json").read_text())
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    by_task = data["heldout_by_task"]
    return {"overall": data["heldout_accuracy_rl"], **{task: by_task[task]["rl"] for task in by_task},
            "step_s": statistics.mean(r["perf/step_s"] for r in steps if "perf/step_s" in r)}


def table(results: dict[str, list[dict]]) -> str:
    """A markdown table: per schedule, held-out RL accuracy overall and per task (%) and the mean RL step time, each
    as the mean and the range over the seeds."""
    lines = ["| schedule | seeds | " + " | ".join(FIELDS) + " | RL step (s) |", "|---" * (len(FIELDS) + 3) + "|"]
    for schedule, runs in results.items():
        cells = []
        for field in (*FIELDS, "step_s"):
            values = [r[field] for r in runs]
            scale = 1.0 if field == "step_s" else 100.0
            cells.append(f"{statistics.mean(values) * scale:.1f} ({min(values) * scale:.1f}-{max(values) * scale:.1f})")
        lines.append(f"| {schedule} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--model", type=Path, default=Path("runs/quickstart/tiny-vlm"))
    parser.add_argument("--out", type=Path, default=Path("runs/convergence"))
    args = parser.parse_args()
    if not (args.model / "config.json").exists():
        subprocess.run([str(Path(sys.executable).parent / "vlrl"), "model", "tiny", "--out", str(args.model),
                        "--max-pixels", "12544"], check=True)
    results: dict[str, list[dict]] = {s: [] for s in args.schedules}
    for seed in args.seeds:  # seeds outermost: a run cut short still compares the schedules on the same seeds
        for schedule in args.schedules:
            results[schedule].append(run(schedule, seed, args.model, args.out))
    (args.out / "convergence.json").write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
