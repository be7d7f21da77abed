"""Synthetic vertical bar charts with exact answers and the boxes the focus tools need.

The renderer draws with PIL and records its own geometry, so every box in the metadata
is where the pixels are: ``x_values_bbox`` holds one strip per category (its bar band,
from the top of the plot down through its axis label, as in ReFOCUS), ``bars_bbox`` the
bars themselves, ``figure_bbox`` the plot area. Questions ask for a category's value or
for the largest / smallest category, with one right answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator

from PIL import Image, ImageDraw, ImageFont

from vlrl.registry import register
from vlrl.types import Sample

CATEGORIES = (
    "Apples", "Pears", "Plums", "Kiwis", "Limes", "Figs", "Dates", "Grapes", "Mango", "Melon",
    "Peach", "Cherry", "Lemon", "Olive", "Guava", "Papaya",
)
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")


@dataclass(frozen=True)
class BarChart:
    """A rendered chart and the pixel geometry it was drawn with."""

    image: Image.Image
    labels: tuple[str, ...]
    values: tuple[int, ...]
    metadata: dict[str, Any]


def render(labels: tuple[str, ...], values: tuple[int, ...], rng: random.Random,
           size: tuple[int, int] = (480, 360), value_labels: bool = True) -> BarChart:
    """Draw the chart; each box is an inclusive pixel rectangle ``{x1, y1, x2, y2}``."""
    w, h = size
    font = ImageFont.load_default(size=12)
    left, right, top, bottom = 44, w - 12, 28, h - 34  # plot area
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    step = 10 if max(values) <= 60 else 20
    top_value = -(-max(values) // step) * step
    y_of = lambda v: bottom - (bottom - top) * v / top_value  # noqa: E731
    for tick in range(0, top_value + 1, step):
        y = round(y_of(tick))
        draw.line([(left, y), (right, y)], fill="#e6e6e6")
        draw.text((left - 6, y), str(tick), fill="#444444", font=font, anchor="rm")
    draw.line([(left, bottom), (right, bottom)], fill="black")
    slot = (right - left) / len(values)
    color = rng.choice(PALETTE)
    strips, bars = [], []
    for i, (label, value) in enumerate(zip(labels, values)):
        x1, x2 = round(left + i * slot + slot * 0.2), round(left + (i + 1) * slot - slot * 0.2)
        y1 = round(y_of(value))
        draw.rectangle([x1, y1, x2, bottom - 1], fill=color)
        if value_labels:
            draw.text(((x1 + x2) / 2, y1 - 3), str(value), fill="black", font=font, anchor="md")
        draw.text(((x1 + x2) / 2, bottom + 6), label, fill="black", font=font, anchor="mt")
        band = (round(left + i * slot), top, round(left + (i + 1) * slot) - 1, h - 1)
        strips.append({"label": label, "x1": band[0], "y1": band[1], "x2": band[2], "y2": band[3]})
        bars.append({"label": label, "x1": x1, "y1": y1, "x2": x2, "y2": bottom - 1})
    metadata = {"type": "v_bar", "x_values_bbox": strips, "bars_bbox": bars,
                "figure_bbox": {"x1": left, "y1": top, "x2": right, "y2": bottom}}
    return BarChart(image, labels, values, metadata)


@register("task", "synthetic_bars")
def synthetic_bars(seed: int = 0, min_bars: int = 3, max_bars: int = 6) -> Iterator[Sample]:
    """An endless stream of bar-chart questions (value of a category; largest / smallest)."""
    rng = random.Random(seed)
    index = 0
    while True:
        n = rng.randint(min_bars, max_bars)
        labels = tuple(rng.sample(CATEGORIES, n))
        values = tuple(rng.sample(range(1, 100), n))  # distinct: extrema have one answer
        chart = render(labels, values, rng, value_labels=rng.random() < 0.7)
        kind = rng.choice(("value", "largest", "smallest"))
        if kind == "value":
            i = rng.randrange(n)
            question, answer = f"What is the value of {labels[i]}?", str(values[i])
        else:
            pick = max if kind == "largest" else min
            question = f"Which category has the {kind} value?"
            answer = labels[values.index(pick(values))]
        yield Sample(f"bars-{seed}-{index}", (chart.image,), question, (answer,), chart.metadata, "synthetic_bars")
        index += 1
