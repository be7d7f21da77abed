"""`vlrl eval --compare`: several models evaluated on the same questions with the same seeds, side by side.

Every model answers the same questions (checked by id) with the same per-question sampling
seeds, so each figure's difference from the first model (the base: say, the warm start) is
paired: its 95% interval comes from resampling the questions once for all models, each
resample's figure computed for the model and the base alike. Written to ``compare.json``,
``compare.md`` and ``compare.png`` (accuracy against k for every model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlrl.config import EvalConfig
from vlrl.eval.report import (
    JUDGES,
    VERIFIER_STATS,
    Tally,
    interval95,
    pooled_draws,
    question_resamples,
    ratio_draws,
    tally,
)

PLOTTED = {"maj@{k}": "-", "pass@{k}": ":", "bestof@{k}_self": "--"}


def compare_models(results: dict[str, Sequence[dict[str, Any]]], cfg: EvalConfig) -> dict[str, Any]:
    """Name -> that model's ``results.jsonl`` records (the first name is the base) -> every figure they all have,
    each model's value, and each other model minus the base with its paired 95% interval."""
    names = list(results)
    if len(names) < 2:
        raise ValueError(f"--compare needs at least two models, got {names}")
    ordered = {name: sorted(records, key=lambda r: r["index"]) for name, records in results.items()}
    ids = {name: [r["id"] for r in records] for name, records in ordered.items()}
    for name in names[1:]:
        if ids[name] != ids[names[0]]:
            raise ValueError(f"{name} and {names[0]} answered different questions ({len(ids[name])} and "
                             f"{len(ids[names[0]])}); compare runs of one config")
    tallies = {name: tally(records, cfg) for name, records in ordered.items()}
    resamples = question_resamples(len(ids[names[0]]), cfg.bootstrap)
    per_model = {name: _draws(t, resamples) for name, t in tallies.items()}
    shared = [f for f in per_model[names[0]] if all(f in per_model[n] for n in names[1:])]
    figures = {}
    for figure in shared:
        values = {name: per_model[name][figure][0] for name in names}
        base_value, base_draws = per_model[names[0]][figure]
        versus = {}
        for name in names[1:]:
            value, draws = per_model[name][figure]
            if value is None or base_value is None:
                versus[name] = {"value": None, "ci95": None}
            else:  # a resample where either is undefined is NaN in the difference, and left out
                versus[name] = {"value": value - base_value, "ci95": interval95(draws - base_draws)}
        figures[figure] = {"values": values, "vs_base": versus}
    return {"models": names, "base": names[0], "questions": len(ids[names[0]]), "ks": tallies[names[0]].ks,
            "figures": figures}


def _draws(t: Tally, resamples: np.ndarray) -> dict[str, tuple[float | None, np.ndarray]]:
    """Figure -> (its value, its value on each resample of the questions; NaN where undefined)."""
    out = {name: ratio_draws(ratio, resamples) for name, ratio in t.ratios.items()}
    for judge, pool in t.pools.items():
        for stat, fn in VERIFIER_STATS.items():
            out[f"verifier_{stat}_{JUDGES[judge]}"] = pooled_draws(pool, fn, resamples)
    return out


def markdown(result: dict[str, Any]) -> str:
    """A row per figure: each model's value, and each other model minus the base with its interval."""
    names, base = result["models"], result["base"]
    others = names[1:]
    lines = [f"# {' vs '.join(names)}", "", f"{result['questions']} questions, the same for every model; figures in %, "
             f"differences from {base} with paired 95% bootstrap intervals over the questions (AUROC as a fraction).",
             "", "| figure | " + " | ".join(names) + " | " + " | ".join(f"{n} - {base}" for n in others) + " |",
             "|---" * (1 + len(names) + len(others)) + "|"]
    for figure, row in result["figures"].items():
        auroc = "auroc" in figure
        cells = [_number(row["values"][n], auroc) for n in names]
        for n in others:
            d = row["vs_base"][n]
            interval = f" [{_number(d['ci95'][0], auroc, True)}, {_number(d['ci95'][1], auroc, True)}]" if d["ci95"] else ""
            cells.append(_number(d["value"], auroc, True) + interval)
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float | None, auroc: bool, signed: bool = False) -> str:
    """A figure as the report shows it: a percentage to one decimal, an AUROC as a fraction to three."""
    if value is None:
        return "—"
    sign = "+" if signed else ""
    return f"{value:{sign}.3f}" if auroc else f"{100 * value:{sign}.1f}"


def default_names(paths: Sequence[str]) -> list[str]:
    """The shortest trailing parts of the model paths that tell them apart (``runs/a/model``, ``runs/b/model`` ->
    ``a/model``, ``b/model``)."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise ValueError(f"--compare names a model twice: {list(paths)}")


def plot(result: dict[str, Any], path: Path) -> None:
    """maj@k, pass@k and best-of-k by self-verification against k, one colour per model."""
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for colour, name in zip(("C0", "C1", "C2", "C3", "C4", "C5"), result["models"]):
        for key, style in PLOTTED.items():
            points = [(k, result["figures"].get(key.format(k=k), {}).get("values", {}).get(name))
                      for k in result["ks"]]
            points = [(k, v) for k, v in points if v is not None]
            if points:
                ax.plot([k for k, _ in points], [100 * v for _, v in points], linestyle=style, color=colour,
                        marker="o", markersize=3, label=f"{name}: {key.replace('@{k}', '@k')}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("accuracy (%)")
    ax.grid(color="#dddddd")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)


def write_comparison(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    (out / "compare.md").write_text(markdown(result))
    plot(result, out / "compare.png")
