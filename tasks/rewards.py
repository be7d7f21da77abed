"""Rule-based rewards: (model response, accepted answers) --> Score(total, parts).

Every reward first extracts the answer (``vlrl.answer.extract_answer``: ``FINAL ANSWER:``,
``\\boxed{}``, the last line, or a bare prediction as given), then compares it with each
accepted answer and keeps the best. ``parts`` holds ``accuracy`` and ``format`` (1 when
the response states its answer with ``FINAL ANSWER:`` or ``\\boxed{}``); ``total`` is the
accuracy, except for the ``format`` reward.

- ``chartqa_relaxed`` is the official ChartQA relaxed accuracy, unchanged (pix2struct's
  ``relaxed_correctness``, used by lmms-eval and Qwen-VL's evaluation): use it to compare
  with published numbers.
- ``chartqa_lenient`` accepts everything ``chartqa_relaxed`` accepts, plus the answers that
  match after ``normalize`` (see there). For training rewards; not the official metric.
- ``exact_match``: equal after trimming, lower-casing, collapsing spaces and dropping a
  trailing period.
- ``multi_answer``: ``||``-separated answers, in any order, each compared leniently.
- ``chartqa_relaxed_list``: ``||``-separated answers, in any order, each under the official
  relaxed accuracy; on a one-item answer it is ``chartqa_relaxed``. The ``refocus`` loader's
  reward: a VTool-R1 list answer expects every item.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from vlrl.answer import extract_answer, has_final_answer
from vlrl.registry import register
from vlrl.types import Score

MAX_RELATIVE_CHANGE = 0.05


def relaxed_correctness(prediction: str, target: str) -> bool:
    """Official ChartQA: numbers within 5% of a non-zero target, else lower-cased string equality.

    A string ending in ``%`` converts as its number / 100 (every trailing ``%`` stripped),
    anything else through Python ``float()``; no other cleaning.
    """
    p, t = _official_float(prediction), _official_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= MAX_RELATIVE_CHANGE
    return prediction.lower() == target.lower()


def _official_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Normalized:
    """An answer after lenient normalization: its text, and its number when it has one."""

    text: str
    number: float | None = None
    percent: bool = False  # written with % or "percent": compared as n and as n / 100


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_CURRENCY = re.compile(r"[$€£¥]")
SHORT_ANSWER_WORDS = 4


def normalize(answer: str) -> Normalized:
    """Lenient form of an answer.

    Trim, lower-case, collapse white space, drop a trailing period and surrounding
    brackets / quotes, remove thousands separators (``1,470`` -> ``1470``) and currency
    signs. A short answer (at most four words) holding exactly one number is that number
    ("about 62 percent" -> 62, "5.2 million" -> 5.2); ``%`` or "percent" marks it as a
    percentage, which matches both 62 and 0.62.
    """
    text = " ".join(answer.strip().lower().split()).rstrip(".").strip("[]()\"' ")
    text = _CURRENCY.sub("", _THOUSANDS.sub("", text)).strip()
    numbers = _NUMBER.findall(text)
    if len(numbers) == 1 and len(text.split()) <= SHORT_ANSWER_WORDS:
        value = float(numbers[0])
        if math.isfinite(value):
            return Normalized(text, value, "%" in text or "percent" in text)
    return Normalized(text)


def lenient_correctness(prediction: str, target: str) -> bool:
    """``relaxed_correctness``, or a match after ``normalize`` (numbers within 5%; a zero target exactly)."""
    if relaxed_correctness(prediction, target):
        return True
    p, t = normalize(prediction), normalize(target)
    if p.number is None or t.number is None:
        return p.text == t.text
    for pv in _readings(p):
        for tv in _readings(t):
            if (tv == 0 and pv == 0) or (tv != 0 and abs(pv - tv) / abs(tv) <= MAX_RELATIVE_CHANGE):
                return True
    return False


def _readings(n: Normalized) -> tuple[float, ...]:
    assert n.number is not None
    return (n.number, n.number / 100) if n.percent else (n.number,)


def exact_correctness(prediction: str, target: str) -> bool:
    return _plain(prediction) == _plain(target)


def _plain(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")


_ITEM_SPLIT = re.compile(r"\s*(?:\|\||;|,(?!\d{3}(?!\d))|\band\b)\s*")


def paired_items(prediction: str, target: str, compare: Callable[[str, str], bool]) -> bool:
    """A list answer, order free: the prediction's items (split on ``||``, ``;``, ``,`` or "and")
    pair one to one with the target's ``||``-separated items under ``compare``. A target of one
    item is compared with the whole prediction, unsplit."""
    wanted = [t.strip() for t in target.split("||") if t.strip()]
    if len(wanted) == 1:
        return compare(prediction, wanted[0])
    given = [p for p in _ITEM_SPLIT.split(prediction.strip().strip("[]")) if p.strip()]
    if len(given) != len(wanted):
        return False
    left = list(given)
    for t in wanted:
        match = next((p for p in left if compare(p, t)), None)
        if match is None:
            return False
        left.remove(match)
    return True


def multi_answer_correctness(prediction: str, target: str) -> bool:
    """``||``-separated answers in any order, each compared with ``lenient_correctness``."""
    return paired_items(prediction, target, lenient_correctness)


def relaxed_list_correctness(prediction: str, target: str) -> bool:
    """``||``-separated answers in any order, each compared with the official ``relaxed_correctness``
    (a target of one item: exactly ``relaxed_correctness``)."""
    return paired_items(prediction, target, relaxed_correctness)


def scored(compare: Callable[[str, str], bool]) -> Callable[[str, Sequence[str]], Score]:
    """A reward from a comparison: the best over the accepted answers, with the format part."""

    def reward(response: str, answers: Sequence[str]) -> Score:
        if not answers:
            raise ValueError("a reward needs at least one accepted answer, got none")
        prediction = extract_answer(response)
        accuracy = float(any(compare(prediction, answer) for answer in answers))
        return Score(accuracy, {"accuracy": accuracy, "format": float(has_final_answer(response))})

    reward.__doc__ = compare.__doc__
    return reward


chartqa_relaxed = register("reward", "chartqa_relaxed")(scored(relaxed_correctness))
chartqa_lenient = register("reward", "chartqa_lenient")(scored(lenient_correctness))
exact_match = register("reward", "exact_match")(scored(exact_correctness))
multi_answer = register("reward", "multi_answer")(scored(multi_answer_correctness))
chartqa_relaxed_list = register("reward", "chartqa_relaxed_list")(scored(relaxed_list_correctness))


@register("reward", "format")
def format_reward(response: str, answers: Sequence[str]) -> Score:
    """1 when the response states a non-empty answer with ``FINAL ANSWER:`` or ``\\boxed{}``."""
    value = float(has_final_answer(response))
    return Score(value, {"format": value})
