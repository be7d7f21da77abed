"""`vlrl data score`: a JSON-lines file of predictions --> mean reward per split and overall (x100).

Each row holds ``prediction`` (the model's text), ``answer`` (a string or a list of
accepted answers) and optionally ``split``. A row that cannot be scored stops the run
with its line number and the problem: a score over silently fewer rows is not comparable.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from vlrl.registry import resolve


def score_file(reward: str, path: str | Path) -> dict[str, Any]:
    """``{"overall": mean x100, "<split>": mean x100, ..., "n": rows}``, rounded to two decimals."""
    fn = resolve("reward", reward)
    totals: dict[str, list[float]] = defaultdict(list)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {str(path)!r} does not exist")
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            prediction, answers, split = _row(line, f"{path}:{line_no}")
            value = fn(prediction, answers).total
            totals["overall"].append(value)
            if split is not None:
                totals[split].append(value)
    if not totals:
        raise ValueError(f"{path}: no rows to score")
    report: dict[str, Any] = {key: round(100 * sum(v) / len(v), 2) for key, v in totals.items()}
    report["n"] = len(totals["overall"])
    return report


def _row(line: str, where: str) -> tuple[str, list[str], str | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    for key in ("prediction", "answer"):
        if key not in row:
            raise ValueError(f"{where}: missing field {key!r}")
    prediction, answer, split = row["prediction"], row["answer"], row.get("split")
    if not isinstance(prediction, str):
        raise ValueError(f"{where}: 'prediction' must be a string, got {type(prediction).__name__}")
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
        raise ValueError(f"{where}: 'answer' must be a non-empty string or a list of them, got {answer!r}")
    if split is not None and not isinstance(split, str):
        raise ValueError(f"{where}: 'split' must be a string, got {type(split).__name__}")
    return prediction, answers, split


def print_report(report: dict[str, Any], as_json: bool) -> None:
    for key, value in report.items():
        if key != "n":
            print(f"{key:>16}: {value:6.2f}")
    print(f"{'rows':>16}: {report['n']}")
    if as_json:
        print(json.dumps(report))
