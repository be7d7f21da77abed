"""`vlrl compare`: two sweeps of `vlrl sweep` (two arms: with and without a tool, two algorithms...) side by side.

Runs of the same seed answered the same held-out questions (``heldout.jsonl``, checked by id),
so each seed gives a paired difference between the arms, with a bootstrap interval over the
questions; over seeds, the mean difference with a Student-t interval. Beside them, each arm's
training curves (tool-call rate and accuracy per step, mean over seeds). Written to
``compare.json``, ``compare.md`` and ``compare.png``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlrl.eval.heldout import paired_bootstrap
from vlrl.recipes.sweep import mean_interval
from vlrl.runlog import read_log

POLICIES = {"teacher": "teacher", "warmstart": "warm start", "rl": "RL"}
CURVES = {"rollout/tool_call_rate": "tool-call rate (sampled, per step)", "reward/accuracy": "accuracy (sampled)"}


@dataclass
class Run:
    """One seed's run of an arm: its summary, its held-out questions' results, its per-step metrics."""

    summary: dict[str, Any]
    questions: list[dict[str, Any]]
    history: list[dict[str, Any]]


def load_arm(folder: Path) -> dict[int, Run]:
    """seed -> its run, for every ``seed-S/latest`` of a sweep folder that finished (has ``heldout.jsonl``)."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder (expected the --out of a `vlrl sweep`)")
    runs = {}
    for path in sorted(folder.glob("seed-*/latest")):
        seed = int(path.parent.name.removeprefix("seed-"))
        if not (path / "heldout.jsonl").is_file():
            continue
        runs[seed] = Run(json.loads((path / "summary.json").read_text()), read_log(path, "heldout"),
                         read_log(path) if (path / "metrics.jsonl").is_file() else [])
    if not runs:
        raise ValueError(f"{folder} holds no finished run (no seed-S/latest/heldout.jsonl)")
    return runs


def compare(a: dict[int, Run], b: dict[int, Run], names: tuple[str, str]) -> dict[str, Any]:
    """Per seed both arms' held-out figures and the paired difference (``a`` minus ``b``); their means over seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed ran in both arms ({names[0]}: {sorted(a)}, {names[1]}: {sorted(b)})")
    per_seed = {}
    for seed in seeds:
        qa, qb = a[seed].questions, b[seed].questions
        ids_a, ids_b = [q["id"] for q in qa], [q["id"] for q in qb]
        if ids_a != ids_b:
            at = next((k for k, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
            raise ValueError(f"seed {seed}: the arms held out different questions ({len(ids_a)} and {len(ids_b)}; "
                             f"first difference at question {at})")
        row: dict[str, Any] = {"questions": len(qa)}
        for policy in POLICIES:
            if not all(policy in q["correct"] for q in qa + qb):
                continue
            right_a, right_b = [q["correct"][policy] for q in qa], [q["correct"][policy] for q in qb]
            row[policy] = {names[0]: statistics.fmean(right_a), names[1]: statistics.fmean(right_b),
                           "difference": statistics.fmean(right_a) - statistics.fmean(right_b),
                           "ci95": list(paired_bootstrap(right_b, right_a, seed=seed))}
            row[policy]["tool_call_rate"] = {name: statistics.fmean(float(q["tool_called"][policy]) for q in qs)
                                             for name, qs in zip(names, (qa, qb)) if policy in qs[0]["tool_called"]}
        per_seed[seed] = row
    means = {}
    for policy in POLICIES:
        rows = [per_seed[s][policy] for s in seeds if policy in per_seed[s]]
        if len(rows) == len(seeds):
            means[policy] = {key: dict(zip(("mean", "ci95"), mean_interval(
                [r[key] for r in rows], (-1.0, 1.0) if key == "difference" else (0.0, 1.0))))
                for key in (*names, "difference")}
    curves = {name: {metric: mean_curve([arm[s].history for s in seeds], metric) for metric in CURVES}
              for name, arm in zip(names, (a, b))}
    return {"arms": list(names), "seeds": seeds, "per_seed": per_seed, "mean": means, "curves": curves,
            "only_in_one_arm": sorted(set(a) ^ set(b))}


def mean_curve(histories: list[list[dict[str, Any]]], metric: str) -> list[list[float]]:
    """[step, mean over the runs that logged ``metric`` at that step] for every step any run logged it."""
    by_step: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            if isinstance(record.get(metric), (int, float)):
                by_step.setdefault(record["step"], []).append(float(record[metric]))
    return [[step, statistics.fmean(values)] for step, values in sorted(by_step.items())]


def markdown(result: dict[str, Any]) -> str:
    """A row per seed and the mean: each arm's held-out accuracy, the difference and its interval, tool calls."""
    a, b = result["arms"]
    lines = []
    for policy, title in POLICIES.items():
        if policy not in result["mean"]:
            continue
        lines += [f"**{title}** (held-out, {a} minus {b}; a seed's interval: paired bootstrap over its questions; "
                  "the mean's: Student t over seeds)", "",
                  f"| seed | {a} | {b} | {a} - {b} | 95% interval | tool calls {a} | tool calls {b} |",
                  "|---|---|---|---|---|---|---|"]
        for seed, row in result["per_seed"].items():
            cell = row[policy]
            calls = [f"{100 * cell['tool_call_rate'][n]:.0f}%" if n in cell["tool_call_rate"] else "" for n in (a, b)]
            lines.append(f"| {seed} | {100 * cell[a]:.1f} | {100 * cell[b]:.1f} | {100 * cell['difference']:+.1f} | "
                         f"{interval(cell['ci95'])} | {calls[0]} | {calls[1]} |")
        mean = result["mean"][policy]
        lines += [f"| mean | {100 * mean[a]['mean']:.1f} | {100 * mean[b]['mean']:.1f} | "
                  f"{100 * mean['difference']['mean']:+.1f} | {interval(mean['difference']['ci95'])} | | |", ""]
    for metric, title in CURVES.items():
        lines.append(f"{title}, mean over seeds, every 10th step:")
        for name in (a, b):
            points = [p for p in result["curves"][name][metric] if p[0] % 10 == 0]
            lines.append(f"- {name}: " + ", ".join(f"step {s:.0f} {v:.2f}" for s, v in points))
        lines.append("")
    return "\n".join(lines)


def interval(ci: list[float] | None) -> str:
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""


def plot(result: dict[str, Any], path: Path) -> None:
    """Each arm's training curves (mean over seeds), one panel per metric."""
    fig = Figure(figsize=(9, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    for k, (metric, title) in enumerate(CURVES.items()):
        ax = fig.add_subplot(1, len(CURVES), k + 1)
        for name in result["arms"]:
            points = result["curves"][name][metric]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.5, label=name)
        ax.set_xlabel("step")
        ax.set_title(f"{title}\nmean over seeds {', '.join(map(str, result['seeds']))}", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(color="#dddddd")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def compare_sweeps(a: Path, b: Path, out: Path) -> dict[str, Any]:
    """Compare the sweep folders ``a`` and ``b``; writes ``OUT/compare.json``, ``.md`` and ``.png``."""
    names = (a.name, b.name) if a.name != b.name else (str(a), str(b))
    result = compare(load_arm(a), load_arm(b), names)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    (out / "compare.md").write_text(markdown(result))
    plot(result, out / "compare.png")
    return result
