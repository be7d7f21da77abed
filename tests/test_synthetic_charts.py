"""Synthetic charts: boxes checked against the pixels, answers re-derived independently, seeds reproducible."""

from __future__ import annotations

import random
import re
from collections import Counter
from decimal import Decimal
from itertools import islice

import numpy as np
import pytest

from solver import solve
from vlrl.builtin.tasks.charts import synthetic_charts
from vlrl.builtin.tasks.questions import FAMILIES, ask


@pytest.fixture(scope="module")
def charts():
    return list(islice(synthetic_charts(seed=7), 60))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def _strip_key(kind: str) -> str:
    return "y_values_bbox" if kind == "h_bar" else "x_values_bbox"


def test_every_kind_and_level_is_generated(charts):
    assert {s.metadata["type"] for s in charts} == {"v_bar", "h_bar", "grouped", "line", "pie"}
    assert {s.metadata["difficulty"] for s in charts} == {"easy", "medium", "hard"}


def test_every_bar_box_holds_its_bar_and_every_bar_lies_in_its_strip(charts):
    for s in (s for s in charts if "bars_bbox" in s.metadata):
        image = np.asarray(s.images[0]).astype(int)
        strips = {b["label"]: b for b in s.metadata[_strip_key(s.metadata["type"])]}
        assert list(strips) == s.metadata["table"]["categories"]
        for bar in s.metadata["bars_bbox"]:
            # inset 3 px: antialiased edges and the axis line drawn over a bar's base
            inner = image[bar["y1"] + 3 : bar["y2"] - 2, bar["x1"] + 3 : bar["x2"] - 2].reshape(-1, 3)
            if len(inner) == 0:  # a bar thinner than 6 px
                continue
            colour, count = Counter(map(tuple, inner)).most_common(1)[0]
            assert count >= 0.9 * len(inner) and colour == _rgb(bar["color"]), (s.id, bar)
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


def test_every_line_marker_is_centred_in_its_box_and_strip(charts):
    lines = [s for s in charts if s.metadata["type"] == "line"]
    assert lines
    for s in lines:
        image = np.asarray(s.images[0]).astype(int)
        strips = {b["label"]: b for b in s.metadata["x_values_bbox"]}
        series = s.metadata["table"]["series"]
        assert len(s.metadata["points_bbox"]) == sum(len(v) for v in series.values())
        for point in s.metadata["points_bbox"]:
            cx, cy = (point["x1"] + point["x2"]) // 2, (point["y1"] + point["y2"]) // 2
            centre = image[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3)
            # the marker's colour fills its centre (another series' marker or line may cross it)
            colours = {_rgb(p["color"]) for p in s.metadata["points_bbox"]
                       if p["label"] == point["label"] and abs(p["y1"] - point["y1"]) < 10}
            near = [min(np.abs(c - np.array(k)).max() for k in colours) for c in centre]
            assert sum(d <= 8 for d in near) >= 5, (s.id, point, centre)  # 8: antialiasing
            assert point["x2"] - point["x1"] <= 12 and point["y2"] - point["y1"] <= 12
            strip = strips[point["label"]]
            assert strip["x1"] <= point["x1"] and point["x2"] <= strip["x2"], (s.id, point, strip)


def test_every_pie_wedge_holds_its_colour_in_proportion_to_its_share(charts):
    pies = [s for s in charts if s.metadata["type"] == "pie"]
    assert pies
    for s in pies:
        image = np.asarray(s.images[0]).astype(int)
        wedges = s.metadata["wedges_bbox"]
        shares = [Decimal(v) for v in s.metadata["table"]["series"]["Value"]]
        assert sum(shares) == 100
        counts = []
        for wedge in wedges:
            ys, xs = np.nonzero((image == _rgb(wedge["color"])).all(axis=2))
            assert len(xs) > 0, (s.id, wedge)
            # every pixel of the wedge's colour lies in its box
            assert wedge["x1"] <= xs.min() and xs.max() <= wedge["x2"] + 1, (s.id, wedge)
            assert wedge["y1"] <= ys.min() and ys.max() <= wedge["y2"] + 1, (s.id, wedge)
            counts.append(len(xs))
        for share, count in zip(shares, counts):  # area follows the data table
            assert abs(100 * count / sum(counts) - float(share)) < 1.5, (s.id, shares, counts)
        gray = np.asarray(s.images[0].convert("L")).astype(int)
        for label in s.metadata["labels_bbox"]:
            part = gray[label["y1"] : label["y2"] + 1, label["x1"] : label["x2"] + 1]
            assert (part < 100).any(), (s.id, label)  # its text is drawn inside


def test_tick_label_text_lies_in_its_own_strip(charts):
    """Dark pixels in the tick-label band belong to exactly the strip of the label drawn there."""
    for s in [s for s in charts if s.metadata["type"] != "pie"][:20]:
        image = np.asarray(s.images[0].convert("L")).astype(int)
        kind = s.metadata["type"]
        key = _strip_key(kind)
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


def test_letter_labels_follow_the_bars_in_order():
    for s in islice(synthetic_charts(seed=5, kinds=["v_bar", "h_bar"], labels="letters"), 6):
        cats = s.metadata["table"]["categories"]
        assert cats == list("ABCDEFGHIJ"[: len(cats)])
        key = "y_values_bbox" if s.metadata["type"] == "h_bar" else "x_values_bbox"
        assert [b["label"] for b in s.metadata[key]] == cats
    with pytest.raises(ValueError, match="labels must be"):
        next(synthetic_charts(labels="digits"))


def test_the_starter_rung_is_square_with_a_clear_largest_bar():
    samples = list(islice(synthetic_charts(seed=2, kinds=["v_bar"], families=["largest"], difficulty="starter",
                                           labels="letters"), 40))
    for s in samples:
        cats = s.metadata["table"]["categories"]
        values = [Decimal(v) for v in s.metadata["table"]["series"]["Value"]]
        ranked = sorted(values)
        assert 3 <= len(values) <= 4 and s.images[0].width == s.images[0].height
        assert ranked[-1] >= Decimal("1.5") * ranked[-2] and ranked[1] >= Decimal("1.5") * ranked[0]
        assert s.question == "Which category has the largest value?"
        assert s.answers == (solve(s.question, cats, values),)
    assert len({s.answers[0] for s in samples}) >= 3  # the winner's place varies


def test_workers_render_the_same_stream_in_the_same_order():
    alone = list(islice(synthetic_charts(seed=4, difficulty="easy"), 20))
    pooled = list(islice(synthetic_charts(seed=4, difficulty="easy", workers=2), 20))
    assert [(s.id, s.question, s.images[0].tobytes()) for s in pooled] == \
        [(s.id, s.question, s.images[0].tobytes()) for s in alone]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        synthetic_charts(workers=0)  # when the task is opened, not at its first sample


def test_the_close_rung_puts_two_bars_within_a_few_percent_and_the_rest_far_below():
    samples = list(islice(synthetic_charts(seed=5, kinds=["v_bar"], families=["largest"], difficulty="close",
                                           labels="letters"), 40))
    leader_left = set()
    for s in samples:
        cats = s.metadata["table"]["categories"]
        values = [Decimal(v) for v in s.metadata["table"]["series"]["Value"]]
        ranked = sorted(values)
        assert 3 <= len(values) <= 4 and len(set(values)) == len(values)
        assert Decimal("1.02") <= ranked[-1] / ranked[-2] <= Decimal("1.06")
        assert all(v * Decimal("1.5") <= ranked[-2] for v in ranked[:-2])
        assert s.answers == (solve(s.question, cats, values),)
        leader_left.add(values.index(ranked[-1]) < values.index(ranked[-2]))
    assert len({s.answers[0] for s in samples}) >= 3  # the leader's place varies
    assert leader_left == {True, False}  # and which side of the runner-up it stands: position gives nothing away
