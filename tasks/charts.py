"""Synthetic bar charts (vertical, horizontal, grouped) with exact answers and renderer-true boxes.

Charts are drawn with matplotlib, and every box in the metadata is read back from
matplotlib's own layout of the saved figure (``get_window_extent`` of each bar and tick
label), in pixels of the PNG, in the ReFOCUS schema:
- ``x_values_bbox`` (vertical / grouped) or ``y_values_bbox`` (horizontal): one strip per
  category, ``{label, x1, y1, x2, y2}``, spanning its bars and its tick label;
- ``bars_bbox``: every bar, with its category and series;
- ``figure_bbox``: the plot area; ``type``: ``v_bar`` | ``h_bar`` | ``grouped``.
The data table rides along in ``metadata["table"]`` (never shown to the model), so the
answers can be re-derived independently.

Difficulty is a curriculum: ``easy`` (3-4 bars, value labels), ``medium`` (5-7 bars,
labels on half the charts), ``hard`` (8-10 bars, or grouped, no value labels: the
model must read the axis).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterator, Literal, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from tasks.questions import FAMILIES, ask, fmt
from vlrl.registry import register
from vlrl.types import Sample

Kind = Literal["v_bar", "h_bar", "grouped"]
KINDS: tuple[Kind, ...] = ("v_bar", "h_bar", "grouped")
DIFFICULTY = {"easy": (3, 4, 1.0), "medium": (5, 7, 0.5), "hard": (8, 10, 0.0)}  # bars, P(value labels)
CATEGORIES = (
    "Apples", "Pears", "Plums", "Kiwis", "Limes", "Figs", "Dates", "Grapes", "Mango", "Melon", "Peach", "Cherry",
    "Lemon", "Olive", "Guava", "Papaya", "Brazil", "Chile", "Kenya", "Norway", "Japan", "Peru", "Spain", "India",
    "Ghana", "Nepal", "Oman", "Cuba", "Laos", "Mali", "Fiji", "Chad",
)
SERIES = ("2019", "2020", "2021", "2022", "Men", "Women", "Online", "Retail")
PALETTES = (
    ("#4e79a7", "#f28e2b", "#e15759"), ("#1b9e77", "#d95f02", "#7570b3"), ("#66c2a5", "#fc8d62", "#8da0cb"),
    ("#377eb8", "#e41a1c", "#4daf4a"), ("#555555", "#a6761d", "#e7298a"),
)
FONTS = ("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono")
SIZES = ((6.4, 4.8), (8.0, 5.0), (5.6, 5.6), (7.2, 4.0))
TITLES = ("Sales by category", "Survey results", "Production in tonnes", "Share of respondents (%)", "Index")


@dataclass(frozen=True)
class Chart:
    """A rendered chart: the PNG, and its metadata (boxes, type, the data table)."""

    image: Image.Image
    png: bytes
    metadata: dict[str, Any]


def render(kind: Kind, categories: Sequence[str], series: Sequence[str], values: Sequence[Sequence[Decimal]],
           rng: random.Random, value_labels: bool = True) -> Chart:
    """Draw ``values[s][c]`` (series s, category c) and read every box back from the layout."""
    fig = Figure(figsize=rng.choice(SIZES), dpi=100)
    FigureCanvasAgg(fig)
    font = {"family": rng.choice(FONTS), "size": rng.choice((8, 9, 10))}
    ax = fig.add_subplot()
    palette = rng.choice(PALETTES)
    n, m = len(categories), len(series)
    width = 0.8 / m
    draw = ax.barh if kind == "h_bar" else ax.bar
    containers = []
    for s, name in enumerate(series):
        positions = [c - 0.4 + width * (s + 0.5) for c in range(n)]
        bars = draw(positions, [float(v) for v in values[s]], width * 0.9, color=palette[s % len(palette)],
                    label=name)
        containers.append(bars)
        if value_labels:
            ax.bar_label(bars, labels=[fmt(v) for v in values[s]], padding=2, fontsize=font["size"] - 1,
                         fontfamily=font["family"])
    (ax.set_yticks if kind == "h_bar" else ax.set_xticks)(range(n), list(categories), fontdict=font)
    if kind == "h_bar":
        ax.invert_yaxis()  # the first category on top, as people read
    if kind == "grouped":
        ax.legend(fontsize=font["size"] - 1, loc="upper right")
    if rng.random() < 0.5:
        ax.grid(axis="x" if kind == "h_bar" else "y", color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
    ax.set_title(rng.choice(TITLES), fontdict=font)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.canvas.draw()
    height = int(round(fig.get_figheight() * fig.dpi))
    renderer = fig.canvas.get_renderer()
    plot = _pixel_box(ax.get_window_extent(renderer), height)
    bar_boxes = [dict(label=categories[c], series=series[s], **_pixel_box(bar.get_window_extent(renderer), height))
                 for s, bars in enumerate(containers) for c, bar in enumerate(bars)]
    ticks = ax.get_yticklabels() if kind == "h_bar" else ax.get_xticklabels()
    label_boxes = [_pixel_box(t.get_window_extent(renderer), height) for t in ticks]
    strips = _strips(kind, categories, bar_boxes, label_boxes, plot)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    png = buffer.getvalue()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    key = "y_values_bbox" if kind == "h_bar" else "x_values_bbox"
    metadata = {"type": kind, key: strips, "bars_bbox": bar_boxes, "figure_bbox": plot,
                "table": {"categories": list(categories), "series": {name: [fmt(v) for v in values[s]]
                                                                     for s, name in enumerate(series)}}}
    return Chart(image, png, metadata)


def _pixel_box(extent: Any, height: int) -> dict[str, int]:
    """A matplotlib display box (origin bottom-left) as an inclusive pixel box (origin top-left)."""
    return {"x1": int(extent.x0), "y1": int(height - extent.y1), "x2": int(extent.x1 + 0.999) - 1,
            "y2": int(height - extent.y0 + 0.999) - 1}


def _strips(kind: Kind, categories: Sequence[str], bars: list[dict], labels: list[dict], plot: dict) -> list[dict]:
    """One box per category: its bars and its tick label, across the plot, not past half the gap."""
    along, across = ("y", "x") if kind == "h_bar" else ("x", "y")
    spans = []
    for c, label in enumerate(categories):
        parts = [b for b in bars if b["label"] == label] + [labels[c]]
        spans.append((min(p[f"{along}1"] for p in parts), max(p[f"{along}2"] for p in parts)))
    strips = []
    for c, (lo, hi) in enumerate(spans):
        if c > 0:
            lo = min(lo, (spans[c - 1][1] + lo) // 2 + 1)
        if c < len(spans) - 1:
            hi = max(hi, (hi + spans[c + 1][0]) // 2)
        start = min(plot[f"{across}1"], labels[c][f"{across}1"])
        end = max(plot[f"{across}2"], labels[c][f"{across}2"])
        strips.append({"label": categories[c], f"{along}1": lo, f"{along}2": hi, f"{across}1": start,
                       f"{across}2": end})
    return [{"label": s["label"], "x1": s["x1"], "y1": s["y1"], "x2": s["x2"], "y2": s["y2"]} for s in strips]


def chart_sample(rng: random.Random, sample_id: str, kinds: Sequence[Kind] = KINDS,
                 families: Sequence[str] = FAMILIES, difficulty: str | None = None) -> Sample:
    """One chart question: data, chart and question all drawn from ``rng``."""
    level = difficulty or rng.choice(tuple(DIFFICULTY))
    if level not in DIFFICULTY:
        raise ValueError(f"unknown difficulty {level!r}; choose from {list(DIFFICULTY)}")
    low, high, p_labels = DIFFICULTY[level]
    kind = rng.choice(tuple(kinds))
    n = rng.randint(low, high) if kind != "grouped" else rng.randint(3, min(high, 6))
    series = tuple(rng.sample(SERIES, rng.randint(2, 3))) if kind == "grouped" else ("Value",)
    categories = tuple(rng.sample(CATEGORIES, n))
    decimals = rng.random() < 0.3
    values = [_distinct_values(rng, n, decimals) for _ in series]
    chart = render(kind, categories, series, values, rng, value_labels=rng.random() < p_labels)
    family = rng.choice(tuple(families))
    s = rng.randrange(len(series))
    about = f" for {series[s]}" if kind == "grouped" else ""
    question = ask(family, categories, values[s], rng, about)
    metadata = {**chart.metadata, "family": family, "difficulty": level, "series_asked": series[s]}
    return Sample(sample_id, (chart.image,), question.text, (question.answer,), metadata, "synthetic_charts")


def _distinct_values(rng: random.Random, n: int, decimals: bool) -> list[Decimal]:
    """n distinct values, at least 2 apart in their last digit (so thresholds fit between)."""
    top = rng.choice((50, 100, 200, 1000))
    step = 2
    picks = rng.sample(range(2, top * (10 if decimals else 1), step), n)
    return [Decimal(p) / 10 if decimals else Decimal(p) for p in picks]


@register("task", "synthetic_charts")
def synthetic_charts(seed: int = 0, kinds: Sequence[Kind] = KINDS, families: Sequence[str] = FAMILIES,
                     difficulty: str | None = None) -> Iterator[Sample]:
    """An endless, seeded stream of chart questions; sample k depends only on (seed, k)."""
    index = 0
    while True:
        rng = random.Random(f"{seed}/{index}")
        yield chart_sample(rng, f"chart-{seed}-{index}", kinds, families, difficulty)
        index += 1
