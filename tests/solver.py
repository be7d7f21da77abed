"""An answer key written apart from tasks/questions.py: reads a question's text, computes from the table."""

from __future__ import annotations

import re
from decimal import Decimal


def solve(question: str, categories: list[str], values: list[Decimal]) -> str:
    """An independent solver: reads the question text and computes from the table."""
    table = dict(zip(categories, values))
    q = re.sub(r" for \w+(?=[?: (])", "", question)
    if m := re.fullmatch(r"What is the value of (.+)\?", q):
        return _s(table[m[1]])
    if m := re.fullmatch(r"Which category has the (largest|smallest) value\?", q):
        return (max if m[1] == "largest" else min)(table, key=table.get)
    if m := re.fullmatch(r"Which is (larger|smaller): (.+) or (.+)\?", q):
        a, b = table[m[2]], table[m[3]]
        return m[2] if (a > b) == (m[1] == "larger") else m[3]
    if m := re.fullmatch(r"What is the difference between the largest and the smallest value\?", q):
        return _s(max(values) - min(values))
    if m := re.fullmatch(r"What is the difference between (.+) and (.+)\?", q):
        return _s(abs(table[m[1]] - table[m[2]]))
    if q == "What is the sum of all values?":
        return _s(sum(values))
    if q == "What is the average of all values (round to one decimal)?":
        mean = sum(values) / len(values)
        return _s(Decimal(int(mean * 10 + Decimal("0.5"))) / 10)  # half-up, values are positive
    if m := re.fullmatch(r"How many categories have a value above (.+)\?", q):
        return str(sum(v > Decimal(m[1]) for v in values))
    if m := re.fullmatch(r"Which category has the (\w+) largest value\?", q):
        k = ["second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"].index(m[1]) + 2
        return sorted(table, key=table.get, reverse=True)[k - 1]
    raise AssertionError(f"unparsed question {question!r}")


def _s(value) -> str:
    value = Decimal(value)
    return str(int(value)) if value == value.to_integral_value() else str(value.normalize())
