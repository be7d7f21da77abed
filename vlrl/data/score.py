"""`vlrl data score`: a JSON-lines file of predictions --> mean reward per split and overall (x100).

Each row holds ``prediction`` (the model's text), ``answer`` (a string or a list of
accepted answers) and optionally ``split``; with a model judge (``--judge``), also
``question``, and the judge's verdict is the score instead of the reward (its rows'
verdicts counted: ``judge_verdicts``). A row that cannot be scored stops the run with its
line number and the problem: a score over silently fewer rows is not comparable.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from vlrl.registry import resolve

Row = tuple[str, str, list[str]]  # question, prediction, accepted answers
Grader = Callable[[Sequence[Row]], list[tuple[float, str]]]  # rows -> (score, verdict) each: a model judge


def score_file(reward: str, path: str | Path, grade: Grader | None = None) -> dict[str, Any]:
    """``{"overall": mean x100, "<split>": mean x100, ..., "n": rows}``, rounded to two decimals; with a model
    judge's ``grade``, its scores instead of the reward's and its verdicts' counts."""
    rows = _rows(Path(path), grade is not None)
    if grade is None:
        fn = resolve("reward", reward)
        values = [fn(prediction, answers).total for _, prediction, answers, _ in rows]
        verdicts: Counter = Counter()
    else:
        graded = grade([row[:3] for row in rows])
        values, verdicts = [score for score, _ in graded], Counter(verdict for _, verdict in graded)
    totals: dict[str, list[float]] = defaultdict(list)
    for (_, _, _, split), value in zip(rows, values):
        totals["overall"].append(value)
        if split is not None:
            totals[split].append(value)
    report: dict[str, Any] = {key: round(100 * sum(v) / len(v), 2) for key, v in totals.items()}
    report["n"] = len(rows)
    if grade is not None:
        report["judge_verdicts"] = dict(sorted(verdicts.items()))
    return report


def _rows(path: Path, with_question: bool) -> list[tuple[str, str, list[str], str | None]]:
    """(question, prediction, answers, split) of every row; ``question`` is "" unless ``with_question``."""
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {str(path)!r} does not exist")
    rows = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            prediction, answers, split = _row(line, where)
            question = _question(line, where) if with_question else ""
            rows.append((question, prediction, answers, split))
    if not rows:
        raise ValueError(f"{path}: no rows to score")
    return rows


def _question(line: str, where: str) -> str:
    question = json.loads(line).get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: a model judge needs each row's 'question' (a non-empty string), got {question!r}")
    return question


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
        if key not in ("n", "judge_verdicts"):
            print(f"{key:>16}: {value:6.2f}")
    print(f"{'rows':>16}: {report['n']}")
    if "judge_verdicts" in report:
        print(f"{'judge verdicts':>16}: " + ", ".join(f"{k} {v}" for k, v in report["judge_verdicts"].items()))
    if as_json:
        print(json.dumps(report))
