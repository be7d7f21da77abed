"""Synthetic charts: boxes checked against the pixels, answers re-derived independently, seeds reproducible."""

from __future__ import annotations

import random
import re
from collections import Counter
from decimal import Decimal
from itertools import islice

import numpy as np
import pytest

from tasks.charts import synthetic_charts
from tasks.questions import FAMILIES, ask


@pytest.fixture(scope="module")
def charts():
    return list(islice(synthetic_charts(seed=7), 45))


def test_every_bar_box_holds_its_bar_and_every_label_its_strip(charts):
    kinds = Counter(s.metadata["type"] for s in charts)
    assert set(kinds) == {"v_bar", "h_bar", "grouped"}
    for s in charts:
        image = np.asarray(s.images[0]).astype(int)
        key = "y_values_bbox" if s.metadata["type"] == "h_bar" else "x_values_bbox"
        strips = {b["label"]: b for b in s.metadata[key]}
        assert list(strips) == s.metadata["table"]["categories"]
        for bar in s.metadata["bars_bbox"]:
            # inset 3 px: antialiased edges and the axis line drawn over a bar's base
            inner = image[bar["y1"] + 3 : bar["y2"] - 2, bar["x1"] + 3 : bar["x2"] - 2].reshape(-1, 3)
            if len(inner) == 0:  # a bar thinner than 6 px
                continue
            colours = Counter(map(tuple, inner))
            colour, count = colours.most_common(1)[0]
            assert count >= 0.9 * len(inner) and colour != (255, 255, 255), (s.id, bar)  # the legend may cover a corner
            strip = strips[bar["label"]]
            assert strip["x1"] <= bar["x1"] and bar["x2"] <= strip["x2"] and strip["y1"] <= bar["y1"]
            assert bar["y2"] <= strip["y2"]
            # just outside the bar's long side, the colour changes (a gap, the axis or another series)
            if s.metadata["type"] == "h_bar":
                outside = image[bar["y1"] - 2, (bar["x1"] + bar["x2"]) // 2]
            else:
                outside = image[(bar["y1"] + bar["y2"]) // 2, bar["x1"] - 2]
            assert tuple(outside) != colour, (s.id, bar)
        ordered = list(strips.values())
        if s.metadata["type"] == "h_bar":
            assert all(a["y2"] < b["y1"] for a, b in zip(ordered, ordered[1:]))
        else:
            assert all(a["x2"] < b["x1"] for a, b in zip(ordered, ordered[1:]))


def test_tick_label_text_lies_in_its_own_strip(charts):
    """Dark pixels in the tick-label band belong to exactly the strip of the label drawn there."""
    for s in charts[:15]:
        image = np.asarray(s.images[0].convert("L")).astype(int)
        kind = s.metadata["type"]
        key = "y_values_bbox" if kind == "h_bar" else "x_values_bbox"
        fig = s.metadata["figure_bbox"]
        # the band holding the tick labels: left of the plot (h_bar) or below it
        band = image[:, : fig["x1"] - 4] if kind == "h_bar" else image[fig["y2"] + 4 :, :]
        ys, xs = np.nonzero(band < 100)
        if kind != "h_bar":
            ys = ys + fig["y2"] + 4
        for x, y in zip(xs, ys):
            inside = [b for b in s.metadata[key] if b["x1"] <= x <= b["x2"] and b["y1"] <= y <= b["y2"]]
            assert len(inside) <= 1
        for strip in s.metadata[key]:
            part = image[strip["y1"] : strip["y2"] + 1, strip["x1"] : strip["x2"] + 1]
            assert (part < 100).any(), (s.id, strip)  # text drawn inside


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


def test_answers_are_re_derived_from_the_data_table(charts):
    for s in charts:  # rendered samples: the table in the metadata
        table = s.metadata["table"]
        values = [Decimal(v) for v in table["series"][s.metadata["series_asked"]]]
        assert solve(s.question, table["categories"], values) == s.answers[0], s.question
    rng = random.Random(0)  # and 3,000 more questions over random tables
    for _ in range(3000):
        n = rng.randint(3, 10)
        cats = rng.sample([f"C{i}" for i in range(40)], n)
        scale = 10 if rng.random() < 0.3 else 1
        values = [Decimal(v) / scale for v in rng.sample(range(2, 2000, 2), n)]
        q = ask(rng.choice(FAMILIES), cats, values, rng)
        assert solve(q.text, cats, values) == q.answer, (q, values)


def test_answers_are_balanced_within_families():
    rng = random.Random(1)
    cats = [f"C{i}" for i in range(6)]
    seen: dict[str, Counter] = {f: Counter() for f in ("comparison", "counting", "extrema", "ranking")}
    for _ in range(3000):
        values = [Decimal(v) for v in rng.sample(range(2, 200, 2), 6)]
        for family in seen:
            q = ask(family, cats, values, rng)
            if family == "comparison":
                first = re.search(r": (\w+) or", q.text)[1]
                seen[family][q.answer == first] += 1
            elif family == "counting":
                seen[family][q.answer] += 1
            else:  # where the answer sits in the value order
                seen[family][sorted(values, reverse=True).index(values[cats.index(q.answer)])] += 1
    assert abs(seen["comparison"][True] - 1500) < 150
    assert set(seen["counting"]) == {str(k) for k in range(7)} and max(seen["counting"].values()) < 3000 / 7 * 1.3
    assert set(seen["extrema"]) == {0, 5} and abs(seen["extrema"][0] - 1500) < 150
    assert set(seen["ranking"]) == {1, 2, 3, 4, 5}


def test_same_seed_same_bytes_other_seed_other_data():
    a = list(islice(synthetic_charts(seed=3), 4))
    b = list(islice(synthetic_charts(seed=3), 4))
    c = list(islice(synthetic_charts(seed=4), 4))
    assert [s.images[0].tobytes() for s in a] == [s.images[0].tobytes() for s in b]
    assert [(s.question, s.answers, s.metadata) for s in a] == [(s.question, s.answers, s.metadata) for s in b]
    assert [s.images[0].tobytes() for s in a] != [s.images[0].tobytes() for s in c]
