"""``results.jsonl`` --> every figure of an evaluation with its 95% interval, as report.json, report.md and plots.

Each figure is a ratio of sums over questions (a per-question mean has one unit of
denominator per question), or, for the verifier's quality, a statistic of the pooled
(score, right?) pairs. Its interval is the 2.5th-97.5th percentile of the figure over
``bootstrap`` resamples of the questions with replacement: the samples of one question
move together, since they share its difficulty.

The figures (``k`` ranges over the configured ks; ``V`` over the verifiers ``self`` =
the policy judging with the image(s), ``self_noimage`` = the policy judging with every
image removed, ``external`` = the external verifier; ``selfgen`` / ``externalgen`` = the policy /
the external verifier writing a check that ends in a verdict, scored 1 / 0 / 0.5 for yes / no / none;
``self_original`` / ``self_edited`` / ``self_answer_only`` = the policy's P(Yes) seeing only the
question's images, only the tools' images, or the question and the bare final answer, no reasoning):

- ``greedy_accuracy``: the greedy trajectory is right. ``mean_accuracy``: a sample is right.
- ``pass@k``: unbiased pass@k (the oracle: some sample of k is right).
- ``maj@k``: the plurality answer of k samples is right. ``bestof@k_V``: the sample V
  scores highest of k is right. ``wmaj@k_V``: the plurality with votes weighted by V's score.
- ``verifier_accuracy_C`` / ``verifier_auroc_C`` / ``verifier_ece_C`` for C = image
  (self), noimage (self_noimage), external, gen (selfgen), gen_external (externalgen), original,
  edited, answer_only: V's
  score >= 0.5 agrees with the reward;
  AUROC of the score against right / wrong; expected calibration error (10 bins).
- ``tool_revision_rate`` / ``_fixed`` / ``_broken``: of the trajectories that stated an
  answer before a tool result, the share whose final answer differs from it / turned a
  wrong answer right / a right one wrong.
- ``second_look_changed`` / ``_fixed`` / ``_broken`` / ``_accuracy``: the same for the
  answer given when asked to re-check, and the accuracy after the re-check.
- ``revision_rate`` (and ``revision_rate_answer`` / ``_phrase`` / ``_tool_recall``): a sample
  revised itself while it reasoned (``vlrl.eval.revisions``: a stated answer changed, a
  revision phrase, a tool called again after a result). ``accuracy_with_revision`` /
  ``accuracy_without_revision``: accuracy of the samples that did / did not.
  ``revision_fixed`` / ``revision_broken``: of the samples whose stated answer changed, the
  share whose first answer was wrong and last right / right and last wrong.
- ``tool_call_rate``: a sample called a tool. ``tool_error_rate``: a call failed.
  ``accuracy_with_tool`` / ``accuracy_without_tool``: accuracy of the samples that did / did not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vlrl.config import EvalConfig
from vlrl.eval.compute import compute_curves, majority_vs_verifiers, mean_tokens, verdict
from vlrl.eval.metrics import (
    accuracy_at,
    auroc,
    best_of_k,
    default_ks,
    expected_calibration_error,
    maj_at_k,
    pass_at_k,
    roc_curve,
    weighted_maj_at_k,
)

# score key -> condition name; the last two write their check (vlrl.eval.written) instead of reading P(Yes)
JUDGES = {"self": "image", "self_noimage": "noimage", "external": "external", "selfgen": "gen",
          "externalgen": "gen_external", "self_original": "original", "self_edited": "edited",
          "self_answer_only": "answer_only"}
REVISION_KINDS = ("answer", "phrase", "tool_recall")
REVISION_EXAMPLES = 3  # revised trajectories quoted in report.md
VERIFIER_STATS: dict[str, Callable[[Sequence[float], Sequence[float]], float | None]] = {
    "accuracy": accuracy_at, "auroc": auroc, "ece": expected_calibration_error}


@dataclass
class _Ratio:
    """A figure as per-question numerators and denominators."""

    num: list[float]
    den: list[float]


@dataclass
class Tally:
    """Every figure's per-question material: the ratios, and each verifier's (score, right) pairs per question."""

    ks: list[int]
    judges: list[str]
    ratios: dict[str, _Ratio]
    pools: dict[str, list[list[tuple[float, float]]]]


def tally(records: Sequence[dict[str, Any]], cfg: EvalConfig) -> Tally:
    """``records`` (sorted by question) counted into per-question figures."""
    ks = cfg.ks or default_ks(cfg.samples)
    ratios: dict[str, _Ratio] = {}
    judges = [j for j in JUDGES if any(j in s.get("scores", {}) for r in records for s in r["samples"])]
    pools: dict[str, list[list[tuple[float, float]]]] = {j: [[] for _ in records] for j in judges}
    for q, record in enumerate(records):
        add = partial(_add, ratios, len(records), q)
        _tally_selection(add, record, ks, judges, cfg.subsets)
        _tally_samples(add, record["samples"], judges, [pools[j][q] for j in judges])
    return Tally(ks, judges, ratios, pools)


def question_resamples(questions: int, bootstrap: int) -> np.ndarray:
    """The bootstrap's draws of question indexes (seeded: every report, and every model compared, draws alike)."""
    return np.random.default_rng(0).integers(0, questions, (bootstrap, questions))


def build_report(records: Sequence[dict[str, Any]], cfg: EvalConfig, seconds: float) -> dict[str, Any]:
    """The figures of ``records`` (one per question) with their intervals, and the counts behind them.

    ``seconds``: this invocation's time; the throughput comes from each question's share
    of its batch's wall time, so it survives a resumed run.
    """
    if not records:
        raise ValueError("no evaluated questions to report on")
    records = sorted(records, key=lambda r: r["index"])
    counted = tally(records, cfg)
    ks, judges, ratios, pools = counted.ks, counted.judges, counted.ratios, counted.pools
    timed = [r["wall_share_s"] for r in records if "wall_share_s" in r]
    resamples = question_resamples(len(records), cfg.bootstrap)
    figures = {name: _ratio_figure(r, resamples) for name, r in ratios.items()}
    for judge, pool in pools.items():
        for stat, fn in VERIFIER_STATS.items():
            figures[f"verifier_{stat}_{JUDGES[judge]}"] = _pooled_figure(pool, fn, resamples)
    dropped: dict[str, int] = {}
    for record in records:
        for reason, n in record.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
    second_look_errors = sum("error" in s.get("second_look", {}) for r in records for s in r["samples"])
    return {
        "model": cfg.model.path, "task": cfg.task.name, "questions": len(records), "samples": cfg.samples, "ks": ks,
        "judges": judges, "seconds": seconds,
        "questions_per_minute": 60 * len(timed) / sum(timed) if timed and sum(timed) > 0 else None,
        "figures": figures,
        "roc": {JUDGES[j]: roc_curve(*zip(*[p for q in pool for p in q])) if any(pool) else ([], [])
                for j, pool in pools.items()},
        "equal_compute": _equal_compute(records, figures, ks, judges),
        "revision_examples": revision_examples(records),
        "written": written_counts(records),
        "counts": {"trajectories": sum(len(r["samples"]) for r in records), "dropped": dropped,
                   "second_look_errors": second_look_errors,
                   "tool_revisions_possible": int(sum(ratios["tool_revision_rate"].den))
                   if "tool_revision_rate" in ratios else 0},
    }


Add = Callable[..., None]  # (figure name, numerator, denominator = 1) of one question


def _add(ratios: dict[str, _Ratio], questions: int, q: int, name: str, num: float, den: float = 1.0) -> None:
    ratio = ratios.setdefault(name, _Ratio([0.0] * questions, [0.0] * questions))
    ratio.num[q] += num
    ratio.den[q] += den


def _tally_selection(add: Add, record: dict[str, Any], ks: Sequence[int], judges: Sequence[str],
                     subsets: int) -> None:
    """One question's greedy and mean accuracy, and what choosing one of k samples gets (pass, vote, judges)."""
    samples = record["samples"]
    correct = [float(s["correct"]) for s in samples]
    clusters = [s["cluster"] for s in samples]
    if "greedy" in record:
        add("greedy_accuracy", float(record["greedy"]["correct"]))
    add("mean_accuracy", sum(correct), len(correct))
    for k in ks:
        add(f"pass@{k}", pass_at_k(len(correct), int(sum(c >= 1.0 for c in correct)), k))
        add(f"maj@{k}", maj_at_k(correct, clusters, k, subsets, record["index"]))
        for judge in judges:
            scores = [s.get("scores", {}).get(judge, 0.0) for s in samples]
            add(f"bestof@{k}_{judge}", best_of_k(correct, scores, k, subsets, record["index"]))
            add(f"wmaj@{k}_{judge}", weighted_maj_at_k(correct, clusters, scores, k, subsets, record["index"]))


def _tally_samples(add: Add, samples: Sequence[dict[str, Any]], judges: Sequence[str],
                   pools: Sequence[list[tuple[float, float]]]) -> None:
    """One question's verdicts into each judge's pool; its samples' tool use and answer revisions."""
    for s in samples:
        for judge, pool in zip(judges, pools):
            if judge in s.get("scores", {}):
                pool.append((s["scores"][judge], float(s["correct"])))
        if "dropped" in s:
            continue
        right = float(s["correct"])
        add("tool_call_rate", float(s["tool_calls"] > 0))
        add("tool_error_rate", s["tool_errors"], s["tool_calls"])
        add("accuracy_with_tool" if s["tool_calls"] else "accuracy_without_tool", right)
        if "revision" in s:
            _tally_revision(add, s["revision"], right)
        for name, revision in (("tool_revision", s.get("tool_revision")), ("second_look", s.get("second_look"))):
            if revision is None or "error" in revision:
                continue
            changed = revision["changed"]
            add(f"{name}_rate" if name == "tool_revision" else f"{name}_changed", float(changed))
            add(f"{name}_fixed", float(changed and revision["before"] < 1 <= revision["after"]))
            add(f"{name}_broken", float(changed and revision["after"] < 1 <= revision["before"]))
            if name == "second_look":
                add("second_look_accuracy", revision["after"])


def _tally_revision(add: Add, revision: dict[str, Any], right: float) -> None:
    """One sample's self-correction: whether it revised itself (by each sign), its accuracy on that side, and
    whether a changed answer was fixed or broken. Every figure is added, with no denominator where it does
    not apply, so each is reported (as none) even when no sample revised."""
    revised = bool(revision["kinds"])
    add("revision_rate", float(revised))
    for kind in REVISION_KINDS:
        add(f"revision_rate_{kind}", float(kind in revision["kinds"]))
    add("accuracy_with_revision", right if revised else 0.0, float(revised))
    add("accuracy_without_revision", 0.0 if revised else right, float(not revised))
    changed = revision["changed"]
    add("revision_fixed", float(changed and revision["before"] < 1 <= right), float(changed))
    add("revision_broken", float(changed and right < 1 <= revision["before"]), float(changed))


def _equal_compute(records: Sequence[dict[str, Any]], figures: dict[str, Any], ks: Sequence[int],
                   judges: Sequence[str]) -> dict[str, Any]:
    curves = compute_curves(records, figures, ks, judges)
    rows = majority_vs_verifiers(curves)
    return {"generated_tokens": mean_tokens(records),
            "verify_tokens": {judge: mean_tokens(records, judge) for judge in judges},
            "curves": curves, "majority_vs_verifiers": rows, "verdict": verdict(rows)}


def written_counts(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Each writing verifier's verdicts (yes, no, none; error: the check did not fit its context) and the tokens
    it wrote, over every sampled answer."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        for s in r["samples"]:
            for name, w in s.get("written", {}).items():
                c = counts.setdefault(name, {"yes": 0, "no": 0, "none": 0, "error": 0, "tokens": 0})
                c[w["verdict"]] += 1
                c["tokens"] += w["tokens"]
    return counts


def revision_examples(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first revised samples, answer changes first: what they wrote, their signs, first and last answers."""
    found = [{"question": r["id"], "sample": k, "correct": s["correct"], **{key: s["revision"][key] for key in (
             "kinds", "phrases", "first", "last", "text")}}
             for r in records for k, s in enumerate(r["samples"]) if s.get("revision", {}).get("kinds")]
    found.sort(key=lambda e: "answer" not in e["kinds"])  # stable: in question order within each kind
    return found[:REVISION_EXAMPLES]


def ratio_draws(ratio: _Ratio, resamples: np.ndarray) -> tuple[float | None, np.ndarray]:
    """A ratio figure's value (None without a denominator) and its value on each resample of the questions
    (NaN where the resample has no denominator)."""
    num, den = np.asarray(ratio.num), np.asarray(ratio.den)
    nums, dens = num[resamples].sum(axis=1), den[resamples].sum(axis=1)
    draws = np.full(len(resamples), np.nan)
    np.divide(nums, dens, out=draws, where=dens > 0)
    return (float(num.sum() / den.sum()) if den.sum() else None), draws


def pooled_draws(pool: list[list[tuple[float, float]]], stat: Callable[[Sequence[float], Sequence[float]], Any],
                 resamples: np.ndarray) -> tuple[float | None, np.ndarray]:
    """A pooled statistic's value over every question's (score, right) pairs (None where undefined) and its value
    on each resample of the questions (NaN where undefined; none drawn when the value itself is undefined)."""
    pairs = [p for question in pool for p in question]
    value = stat(*zip(*pairs)) if pairs else None
    if value is None:
        return None, np.full(0, np.nan)
    draws = []
    for row in resamples:
        drawn = [p for q in row for p in pool[q]]
        got = stat(*zip(*drawn)) if drawn else None
        draws.append(np.nan if got is None else got)
    return float(value), np.asarray(draws, dtype=float)


def interval95(draws: np.ndarray) -> list[float] | None:
    """The 2.5th-97.5th percentiles of the defined draws (None when none is)."""
    kept = draws[~np.isnan(draws)]
    return [float(q) for q in np.quantile(kept, [0.025, 0.975])] if kept.size else None


def _ratio_figure(ratio: _Ratio, resamples: np.ndarray) -> dict[str, Any]:
    value, draws = ratio_draws(ratio, resamples)
    if value is None:
        return {"value": None, "ci95": None, "n": 0}
    return {"value": value, "ci95": interval95(draws), "n": int(sum(ratio.den))}


def _pooled_figure(pool: list[list[tuple[float, float]]], stat: Callable[[Sequence[float], Sequence[float]], Any],
                   resamples: np.ndarray) -> dict[str, Any]:
    value, draws = pooled_draws(pool, stat, resamples)
    n = sum(len(question) for question in pool)
    return {"value": value, "ci95": None if value is None else interval95(draws), "n": n}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """One flat JSON object: every figure's value, the question count, the seconds."""
    flat = {name: f["value"] for name, f in report["figures"].items()}
    return flat | {"questions": report["questions"], "seconds": round(report["seconds"], 2),
                   "questions_per_minute": report["questions_per_minute"]}


def write_report(out: Path, report: dict[str, Any]) -> None:
    """report.json, report.md, accuracy_vs_k.png, roc.png in ``out``."""
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report))
    _plot_scaling(report, out / "accuracy_vs_k.png")
    _plot_compute(report, out / "accuracy_vs_tokens.png")
    _plot_roc(report, out / "roc.png")


def _cell(figure: dict[str, Any] | None) -> str:
    if figure is None or figure["value"] is None:
        return "—"
    low, high = figure["ci95"] or (None, None)
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None else ""
    return f"{100 * figure['value']:.1f}{interval}"


def _markdown(report: dict[str, Any]) -> str:
    f = report["figures"]
    judges = report["judges"]
    lines = [f"# Evaluation of {report['model']} on {report['task']}", "",
             f"{report['questions']} questions, N = {report['samples']} samples each; every figure in % with its "
             "95% bootstrap interval over questions.", ""]
    if "greedy_accuracy" in f:
        lines.append(f"Greedy accuracy **{_cell(f['greedy_accuracy'])}**, mean accuracy of a sample "
                     f"**{_cell(f['mean_accuracy'])}**.")
    else:
        lines.append(f"Mean accuracy of a sample **{_cell(f['mean_accuracy'])}**.")
    lines += ["", "## Accuracy vs k", "",
              "| k | pass@k (oracle) | maj@k | " + " | ".join(f"best-of-k {j}" for j in judges)
              + "".join(f" | weighted maj {j}" for j in judges) + " |",
              "|---" * (3 + 2 * len(judges)) + "|"]
    for k in report["ks"]:
        cells = [_cell(f.get(f"pass@{k}")), _cell(f.get(f"maj@{k}"))]
        cells += [_cell(f.get(f"bestof@{k}_{j}")) for j in judges] + [_cell(f.get(f"wmaj@{k}_{j}")) for j in judges]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if judges:
        lines += ["", "## The verifiers on the model's answers", "",
                  "| verifier | accuracy at 0.5 | AUROC | ECE |", "|---|---|---|---|"]
        for j in judges:
            c = JUDGES[j]
            lines.append(f"| {j} | {_cell(f[f'verifier_accuracy_{c}'])} | {_auroc_cell(f[f'verifier_auroc_{c}'])} | "
                         f"{_cell(f[f'verifier_ece_{c}'])} |")
    for name, c in report.get("written", {}).items():
        lines.append(f"\n{name} wrote {c['tokens']} tokens of checks; verdicts: yes {c['yes']}, no {c['no']}, "
                     f"none {c['none']} (scored 0.5), checks that did not fit the context {c['error']}.")
    if report.get("equal_compute") and judges:
        lines += _equal_compute_lines(report["equal_compute"])
    lines += _self_correction_lines(report)
    lines += ["", "## Tool use", "", "| call rate | error rate | accuracy with a call | without |",
              "|---|---|---|---|",
              f"| {_cell(f.get('tool_call_rate'))} | {_cell(f.get('tool_error_rate'))} | "
              f"{_cell(f.get('accuracy_with_tool'))} | {_cell(f.get('accuracy_without_tool'))} |", ""]
    counts = report["counts"]
    lines.append(f"{counts['trajectories']} sampled trajectories; dropped (counted wrong): "
                 f"{counts['dropped'] or 'none'}; second looks that failed: {counts['second_look_errors']}.")
    if report["questions_per_minute"]:
        lines.append(f"Throughput: {report['questions_per_minute']:.1f} questions per minute "
                     "(N samples, the greedy one, every verifier and second look included).")
    lines += ["", "Plots: `accuracy_vs_k.png`, `accuracy_vs_tokens.png`, `roc.png`. Definitions: `vlrl/eval/report.py`, "
              "`vlrl/eval/compute.py`.", ""]
    return "\n".join(lines)


def _equal_compute_lines(compute: dict[str, Any]) -> list[str]:
    lines = ["", "## At equal compute", "",
             f"A sample generates {compute['generated_tokens']:.1f} tokens on average; verifying one costs "
             + ", ".join(f"{j} {t:.1f}" for j, t in compute["verify_tokens"].items())
             + " (read anew + written). At each maj@k budget, the best selection by a verifier that costs no more:",
             "", "| k | tokens per question | maj@k | best verifier-based | maj minus it |", "|---|---|---|---|---|"]
    for r in compute["majority_vs_verifiers"]:
        best = r["best_verifier"]
        shown = "—" if best is None else f"{100 * best['accuracy']:.1f} ({best['strategy']}, k = {best['k']})"
        margin = "—" if r["margin"] is None else f"{100 * r['margin']:+.1f}"
        majority = "—" if r["majority"] is None else f"{100 * r['majority']:.1f}"
        lines.append(f"| {r['k']} | {r['budget']:.0f} | {majority} | {shown} | {margin} |")
    return [*lines, "", compute["verdict"]]


def _self_correction_lines(report: dict[str, Any]) -> list[str]:
    f = report["figures"]
    lines = ["", "## Self-correction", "", "| when | changed | fixed | broken | n |", "|---|---|---|---|---|"]
    for name, label, changed in (("tool_revision", "after a tool result", "tool_revision_rate"),
                                 ("second_look", "after a second look", "second_look_changed")):
        if changed in f:
            lines.append(f"| {label} | {_cell(f[changed])} | {_cell(f[f'{name}_fixed'])} | "
                         f"{_cell(f[f'{name}_broken'])} | {f[changed]['n']} |")
    if "second_look_accuracy" in f:
        lines.append(f"\nAccuracy after the second look: {_cell(f['second_look_accuracy'])}.")
    if "revision_rate" not in f:
        return lines
    lines += ["", "Within a trajectory (a stated answer changed, a revision phrase, a tool called again after a "
              "result):", "", "| revised | by answer | by phrase | by tool re-call | accuracy revised | not revised "
              "| answer changes fixed | broken |", "|---|---|---|---|---|---|---|---|",
              f"| {_cell(f['revision_rate'])} | " + " | ".join(_cell(f[f"revision_rate_{k}"]) for k in REVISION_KINDS)
              + f" | {_cell(f['accuracy_with_revision'])} | {_cell(f['accuracy_without_revision'])} | "
              f"{_cell(f['revision_fixed'])} | {_cell(f['revision_broken'])} |"]
    for e in report.get("revision_examples", []):
        lines += ["", f"Question {e['question']}, sample {e['sample']} ({', '.join(e['kinds'])}; first answer "
                  f"{e['first']!r}, last {e['last']!r}, {'right' if e['correct'] >= 1 else 'wrong'}):", "",
                  "```text", e["text"], "```"]
    return lines


def _auroc_cell(figure: dict[str, Any]) -> str:
    if figure["value"] is None:
        return "— (every answer right, or every one wrong)"
    low, high = figure["ci95"]
    return f"{figure['value']:.3f} [{low:.3f}, {high:.3f}]"


def _plot_compute(report: dict[str, Any], path: Path) -> None:
    """Every strategy's accuracy against the tokens it spends per question, one line each, a point per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in report["equal_compute"]["curves"].items():
        shown = [p for p in points if p["accuracy"] is not None]
        ax.plot([p["tokens"] for p in shown], [100 * p["accuracy"] for p in shown], marker="o",
                linestyle="-" if name == "maj" else "--", label="maj@k" if name == "maj" else name.replace("_", ", "))
        for p in shown:
            ax.annotate(f"k={p['k']}", (p["tokens"], 100 * p["accuracy"]), fontsize=6, xytext=(2, 2),
                        textcoords="offset points")
    if all(p["tokens"] > 0 for points in report["equal_compute"]["curves"].values() for p in points):
        ax.set_xscale("log", base=2)  # k doubles
    ax.set_xlabel("tokens per question (generated + verification)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy at equal compute", fontsize=9)
    ax.grid(color="#dddddd")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_scaling(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, ks = report["figures"], report["ks"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = [("pass@{k}", "pass@k (oracle)", "-"), ("maj@{k}", "maj@k", "-")]
    series += [(f"bestof@{{k}}_{j}", f"best-of-k, {j}", "--") for j in report["judges"]]
    for key, label, style in series:  # weighted majority: in the tables of report.md
        points = [f.get(key.format(k=k)) for k in ks]
        if any(p is None or p["value"] is None for p in points):
            continue
        values = [p["value"] for p in points]
        line, = ax.plot(ks, values, style, marker="o", markersize=3, label=label)
        ax.fill_between(ks, [p["ci95"][0] for p in points], [p["ci95"][1] for p in points], alpha=0.12,
                        color=line.get_color())
    if "greedy_accuracy" in f:
        ax.axhline(f["greedy_accuracy"]["value"], color="grey", linewidth=0.8, label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples per question)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{report['questions']} questions, N = {report['samples']}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_roc(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.6)
    for condition, (fpr, tpr) in report["roc"].items():
        area = report["figures"][f"verifier_auroc_{condition}"]["value"]
        if fpr:
            ax.plot(fpr, tpr, label=f"{condition} (AUROC {'—' if area is None else f'{area:.3f}'})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("the verifiers on the model's answers", fontsize=9)
    if report["roc"]:  # an evaluation without verifiers draws the diagonal alone
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
