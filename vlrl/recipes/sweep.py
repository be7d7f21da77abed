"""`vlrl sweep`: one config over several seeds, and each task's held-out figures per seed with their spread.

Each seed is a `vlrl train` process of its own (``OUT/seed-S/``, its output in
``OUT/seed-S.log``), ``parallel`` at a time. The table has a row per task (and ``all``) and
figure (teacher, warm start, RL, RL minus the warm start), a column per seed, the mean and
the 95% interval of the mean over seeds (Student's t); a seed whose run failed is named with
its exit status and kept out of the means. ``sweep.json`` holds it all, ``sweep.md`` the table.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vlrl.eval.heldout import BASELINES

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
FIGURES = {"teacher": "teacher", "warmstart": "warm start", "rl": "RL", "gain": "RL - warm start"}


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; anything else is named."""
    try:
        if "-" in text.strip("-"):
            first, last = (int(v) for v in text.split("-", 1))
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(v) for v in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds must be FIRST-LAST or a comma-separated list of distinct seeds >= 0, got {text!r}")
    return seeds


def run_sweep(config: str, overrides: list[str], seeds: list[int], out: Path, parallel: int = 1) -> dict[str, Any]:
    """Train ``config`` once per seed and tabulate the runs' held-out figures (``OUT/sweep.json`` / ``.md``)."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    out.mkdir(parents=True, exist_ok=True)
    waiting, running, status = list(seeds), {}, {}
    began = time.perf_counter()
    while waiting or running:
        while waiting and len(running) < parallel:
            seed = waiting.pop(0)
            with (out / f"seed-{seed}.log").open("w") as log:
                running[seed] = subprocess.Popen(
                    [sys.executable, "-m", "vlrl.cli", "train", config, *overrides, f"seed={seed}",
                     f"log.dir={out / f'seed-{seed}'}", "log.progress=false"], stdout=log, stderr=subprocess.STDOUT)
            print(f"sweep: seed {seed} started ({out / f'seed-{seed}.log'})", flush=True)
        for seed, proc in list(running.items()):
            if proc.poll() is not None:
                status[seed] = proc.returncode
                del running[seed]
                print(f"sweep: seed {seed} {'done' if proc.returncode == 0 else f'failed ({proc.returncode})'} "
                      f"at {time.perf_counter() - began:.0f} s", flush=True)
        time.sleep(0.5)
    summaries = {seed: json.loads((out / f"seed-{seed}" / "latest" / "summary.json").read_text())
                 for seed in seeds if status[seed] == 0}
    failed = {seed: f"exit status {status[seed]}, see {out / f'seed-{seed}.log'}" for seed in seeds if status[seed]}
    sweep = {"config": config, "overrides": overrides, "seeds": seeds, "failed": failed,
             "table": sweep_table(summaries), "regressions": {s: m.get("regressions", []) for s, m in summaries.items()},
             "wall_seconds": round(time.perf_counter() - began, 1)}
    (out / "sweep.json").write_text(json.dumps(sweep, indent=1))
    (out / "sweep.md").write_text(markdown(sweep))
    print(markdown(sweep))
    return sweep


def sweep_table(summaries: dict[int, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Task -> figure -> {"per_seed": {seed: value}, "mean", "ci95"} from the runs' ``summary.json``."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for seed, summary in summaries.items():
        rows = {"all": {"teacher": summary.get("teacher_accuracy"), "warmstart": summary.get(
            "heldout_accuracy_warmstart"), "rl": summary.get("heldout_accuracy_rl")}}
        if len(summary.get("heldout_by_task", {})) > 1:
            rows |= summary["heldout_by_task"]
        for task, figures in rows.items():
            if figures.get("rl") is None:
                continue
            values = {name: figures.get(name) for name in ("teacher", "warmstart", "rl")}
            if values["warmstart"] is not None:
                values["gain"] = values["rl"] - values["warmstart"]
            for name, value in values.items():
                if value is not None:
                    table.setdefault(task, {}).setdefault(name, {"per_seed": {}})["per_seed"][seed] = value
    for figures in table.values():
        for name, cell in figures.items():
            bounds = (-1.0, 1.0) if name == "gain" else (0.0, 1.0)
            cell["mean"], cell["ci95"] = mean_interval(list(cell["per_seed"].values()), bounds)
    return table


def mean_interval(values: list[float], bounds: tuple[float, float] = (-math.inf, math.inf)
                  ) -> tuple[float, list[float] | None]:
    """The mean and the 95% interval of the mean (Student's t; None from one value), cut to ``bounds``: an
    accuracy's interval never runs past 0 or 1, however few the seeds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    t = T975[len(values) - 2] if len(values) - 1 <= len(T975) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return mean, [max(mean - half, bounds[0]), min(mean + half, bounds[1])]


def markdown(sweep: dict[str, Any]) -> str:
    """The table: a row per task and figure, a column per seed, the mean and its interval."""
    seeds = [s for s in sweep["seeds"] if s not in sweep["failed"]]
    lines = ["| task | figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | 95% interval |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for task, figures in sweep["table"].items():
        for name, cell in figures.items():
            per_seed = " | ".join(f"{100 * cell['per_seed'][s]:.1f}" if s in cell["per_seed"] else "" for s in seeds)
            ci = cell["ci95"]
            shown = f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
            lines.append(f"| {task} | {FIGURES[name]} | {per_seed} | {100 * cell['mean']:.1f} | {shown} |")
    fell = [f"seed {s}: {r['task']} below the {BASELINES[r['below']]}" for s, found in sweep["regressions"].items()
            for r in found]
    lines.append("")
    lines.append(f"Regressions: {'; '.join(fell) if fell else 'none'}. Failed seeds: "
                 f"{', '.join(f'{s} ({why})' for s, why in sweep['failed'].items()) or 'none'}.")
    return "\n".join(lines) + "\n"
