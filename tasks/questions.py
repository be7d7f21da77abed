"""Question families over a small data table, each with one programmatically exact answer.

A table is categories x one series of numbers (values distinct, so extrema and ranks have
one answer). Each family draws what it asks about so that, within the family, answers
are as balanced as chance allows: the asked category is uniform, "which of A or B" puts
the right one first half the time, counting picks the count uniformly from 0..n.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, Sequence

FAMILIES = ("retrieval", "extrema", "comparison", "difference", "sum", "average", "counting", "ranking",
            "multi_hop")  # the default mix; BUILDERS also has "largest", asked for by name
ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}


@dataclass(frozen=True)
class Question:
    family: str
    text: str
    answer: str


def fmt(value: Decimal) -> str:
    """A number as a person writes it: no trailing zeros, no exponent ("12", "4.5", "-3")."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def check_families(families: Sequence[str]) -> None:
    """ValueError unless ``families`` names at least one family, each one known."""
    unknown = sorted(set(families) - set(BUILDERS))
    if unknown or not families:
        raise ValueError(f"unknown question families {unknown}; families: {list(BUILDERS)}")


def ask(family: str, categories: Sequence[str], values: Sequence[Decimal], rng: random.Random,
        about: str = "") -> Question:
    """One question of ``family`` about ``values`` (``about`` names the series, e.g. " for 2019")."""
    if family not in BUILDERS:
        raise ValueError(f"unknown question family {family!r}; families: {list(BUILDERS)}")
    if len(set(values)) != len(values) or len(values) < 2:
        raise ValueError(f"questions need at least two distinct values, got {list(values)}")
    text, answer = BUILDERS[family](list(categories), list(values), rng, about)
    return Question(family, text, answer)


def _retrieval(cats, vals, rng, about):
    i = rng.randrange(len(cats))
    return f"What is the value of {cats[i]}{about}?", fmt(vals[i])


def _extrema(cats, vals, rng, about):
    word, pick = rng.choice((("largest", max), ("smallest", min)))
    return f"Which category has the {word} value{about}?", cats[vals.index(pick(vals))]


def _largest(cats, vals, rng, about):
    return f"Which category has the largest value{about}?", cats[vals.index(max(vals))]


def _comparison(cats, vals, rng, about):
    i, j = rng.sample(range(len(cats)), 2)
    word = rng.choice(("larger", "smaller"))
    better = i if (vals[i] > vals[j]) == (word == "larger") else j
    return f"Which is {word}{about}: {cats[i]} or {cats[j]}?", cats[better]


def _difference(cats, vals, rng, about):
    i, j = rng.sample(range(len(cats)), 2)
    return f"What is the difference between {cats[i]} and {cats[j]}{about}?", fmt(abs(vals[i] - vals[j]))


def _sum(cats, vals, rng, about):
    return f"What is the sum of all values{about}?", fmt(sum(vals, Decimal(0)))


def _average(cats, vals, rng, about):
    mean = (sum(vals, Decimal(0)) / len(vals)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return f"What is the average of all values{about} (round to one decimal)?", fmt(mean)


def _counting(cats, vals, rng, about):
    ordered, n = sorted(vals), len(vals)
    count = rng.randint(0, n)  # how many lie above the threshold, drawn first so counts are balanced
    low = ordered[n - count - 1] if count < n else ordered[0] - 10
    high = ordered[n - count] if count > 0 else ordered[-1] + 10
    threshold = _between(low, high, rng)  # low <= threshold < high
    return f"How many categories have a value above {fmt(threshold)}{about}?", str(count)


def _between(low: Decimal, high: Decimal, rng: random.Random) -> Decimal:
    """A round number in [low, high): ties go to 'not above'."""
    for step in (Decimal(10), Decimal(5), Decimal(1), Decimal("0.1")):
        candidates = [k * step for k in range(int(low // step), int(high // step) + 1) if low <= k * step < high]
        if candidates:
            return rng.choice(candidates)
    return low


def _ranking(cats, vals, rng, about):
    k = rng.randint(2, min(len(vals), max(ORDINALS)))
    order = sorted(range(len(vals)), key=lambda i: vals[i], reverse=True)
    return f"Which category has the {ORDINALS[k]} largest value{about}?", cats[order[k - 1]]


def _multi_hop(cats, vals, rng, about):
    return f"What is the difference between the largest and the smallest value{about}?", fmt(max(vals) - min(vals))


BUILDERS: dict[str, Callable] = {
    "retrieval": _retrieval, "extrema": _extrema, "comparison": _comparison, "difference": _difference,
    "sum": _sum, "average": _average, "counting": _counting, "ranking": _ranking, "multi_hop": _multi_hop,
    "largest": _largest,  # extrema without "smallest": the starter rung's one question
}
