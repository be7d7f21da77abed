"""Synthetic charts (vertical, horizontal and grouped bars, lines, pies) with exact answers and renderer-true boxes.

Charts are drawn with matplotlib, and every box in the metadata is read back from
matplotlib's own layout of the drawn figure (``get_window_extent`` of each bar, wedge and
label; the data transform for line markers), in pixels of the image, in the ReFOCUS schema:
- ``x_values_bbox`` (vertical bars, grouped bars, lines) or ``y_values_bbox`` (horizontal
  bars): one strip per category, ``{label, x1, y1, x2, y2}``, spanning its marks and its
  tick label;
- ``bars_bbox`` (bar kinds), ``points_bbox`` (lines: each marker), ``wedges_bbox`` and
  ``labels_bbox`` (pies): every mark, with its category, series and fill colour;
- ``figure_bbox``: the plot area; ``type``: ``v_bar`` | ``h_bar`` | ``grouped`` | ``line`` | ``pie``.
The data table rides along in ``metadata["table"]`` (never shown to the model), so the
answers can be re-derived independently.

Difficulty is a curriculum (``LEVELS``): more categories, fewer value labels (the model
must read the axis), and more distractors (dashed reference lines with their own numbers,
drawn behind the marks) as it rises. Below it, ``starter`` (only when asked for by name)
is the quickstart's rung for a model trained from scratch in minutes: 3-4 bars on a
square figure, no printed values, and a largest / smallest value that stands out from the
runner-up. ``close`` (also only by name) is starter with the two largest values 2-6% apart
(the third at most the runner-up / 1.5): which two lead is plain at any size, which of them
leads takes a closer look (a few pixels at 112 px; ``tools.bars.compare_bars`` enlarges it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any, Iterator, Literal, Sequence, get_args

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

from vlrl.builtin.tasks.questions import BUILDERS, FAMILIES, ask, check_families, fmt
from vlrl.builtin.tasks.stream import indexed_stream
from vlrl.task import task
from vlrl.types import Sample

Kind = Literal["v_bar", "h_bar", "grouped", "line", "pie"]
KINDS: tuple[Kind, ...] = ("v_bar", "h_bar", "grouped", "line", "pie")
Labels = Literal["names", "letters"]
LETTERS = "ABCDEFGHIJ"
PIE_FAMILIES = tuple(f for f in BUILDERS if f not in ("sum", "average"))  # a pie always sums to 100


@dataclass(frozen=True)
class Level:
    """One rung of the curriculum."""

    categories: tuple[int, int]  # how many bars / points / rows (inclusive range)
    p_value_labels: float  # chance that values are printed on the marks
    distractors: int  # reference lines (charts) or extra columns (tables) the question does not need
    spread: float = 1.0  # the largest value is >= spread x the runner-up, the smallest <= the next / spread
    square: bool = False  # square figures: shrunk to a few image tokens, each bar keeps tokens of its own
    data_bars: bool = False  # tables: a bar under each number, its length the value (a spreadsheet's data bars)
    spare_columns: int = 1  # tables: up to this many extra columns beyond the distractors, drawn at random
    top_gap: tuple[float, float] | None = None  # the largest is (1 + lo) to (1 + hi) x the runner-up (spread: the rest)


LEVELS = {
    "starter": Level((3, 4), 0.0, 0, spread=1.5, square=True, data_bars=True, spare_columns=0),
    "close": Level((3, 4), 0.0, 0, spread=1.5, square=True, data_bars=True, spare_columns=0, top_gap=(0.02, 0.06)),
    "easy": Level((3, 4), 1.0, 0),
    "medium": Level((5, 7), 0.5, 1),
    "hard": Level((8, 10), 0.0, 2),
}
CURRICULUM = ("easy", "medium", "hard")  # the rungs drawn at random when no difficulty is given
CATEGORIES = (
    "Apples", "Pears", "Plums", "Kiwis", "Limes", "Figs", "Dates", "Grapes", "Mango", "Melon", "Peach", "Cherry",
    "Lemon", "Olive", "Guava", "Papaya", "Brazil", "Chile", "Kenya", "Norway", "Japan", "Peru", "Spain", "India",
    "Ghana", "Nepal", "Oman", "Cuba", "Laos", "Mali", "Fiji", "Chad",
)
# line-chart x labels. Never numbers: the official ChartQA metric compares any answer that
# parses as a number within 5%, so a category called "2016" would accept "2000".
PERIODS = (
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October"),
    ("Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta", "Iota", "Kappa"),
)
SERIES = ("2019", "2020", "2021", "2022", "Men", "Women", "Online", "Retail")
PALETTES = (
    ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f", "#bab0ac", "#ff9da7"),
    ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1f78b4", "#b2df8a"),
    ("#377eb8", "#e41a1c", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999", "#66c2a5", "#ffd92f"),
)
FONTS = ("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono")
SIZES = ((6.4, 4.8), (8.0, 5.0), (5.6, 5.6), (7.2, 4.0))
SQUARE = (5.6, 5.6)  # inches; drawn at SQUARE_DPI: 280 px with the layout (fonts, margins) of a 560 px figure
SQUARE_DPI = 50
TITLES = ("Sales by category", "Survey results", "Production in tonnes", "Index", "Visitors (thousands)")
PIE_TITLES = ("Share of respondents (%)", "Market share (%)", "Budget split (%)")
REFERENCES = ("Target", "Average", "Last year", "Forecast")
SCALES = (50, 100, 200, 1000)  # the largest value a chart may show
MARKER_POINTS = 7  # line-chart marker size, in points


@dataclass(frozen=True)
class Chart:
    """A rendered chart: the image, and its metadata (boxes, type, the data table)."""

    image: Image.Image
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Style:
    """How a chart looks; drawn from the sample's rng so the same seed gives the same pixels."""

    size: tuple[float, float]
    font: dict[str, Any]
    palette: tuple[str, ...]
    grid: bool
    title: str
    dpi: int = 100

    @classmethod
    def draw(cls, rng: random.Random, pie: bool = False, square: bool = False) -> Style:
        return cls(SQUARE if square else rng.choice(SIZES), {"family": rng.choice(FONTS), "size": rng.choice((8, 9, 10))},
                   rng.choice(PALETTES), rng.random() < 0.5, rng.choice(PIE_TITLES if pie else TITLES),
                   SQUARE_DPI if square else 100)


def render(kind: Kind, categories: Sequence[str], series: Sequence[str], values: Sequence[Sequence[Decimal]],
           style: Style, value_labels: bool = True, references: Sequence[tuple[str, Decimal]] = ()) -> Chart:
    """Draw ``values[s][c]`` (series s, category c) and read every box back from the layout.

    ``references`` are (name, value) dashed lines drawn behind the marks: numbers on the
    chart that answer nothing.
    """
    fig = Figure(figsize=style.size, dpi=style.dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    font = style.font
    marks: list[tuple[str, str, Any]] = []  # (category, series, artist or data point)
    if kind == "pie":
        texts = _draw_pie(ax, categories, values[0], style, value_labels)
    else:
        marks = _draw_axes_chart(ax, kind, categories, series, values, style, value_labels)
        _draw_references(ax, kind, references, font)
        if style.grid:
            ax.grid(axis="x" if kind == "h_bar" else "y", color="#dddddd", linewidth=0.8)
            ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(style.title, fontdict=font)
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    renderer = fig.canvas.get_renderer()
    height = image.height
    plot = _pixel_box(ax.get_window_extent(renderer), height)
    table = {"categories": list(categories),
             "series": {name: [fmt(v) for v in values[s]] for s, name in enumerate(series)}}
    metadata: dict[str, Any] = {"type": kind, "figure_bbox": plot, "table": table}
    if kind == "pie":
        wedges, labels = texts
        metadata["wedges_bbox"] = [dict(label=c, color=to_hex(w.get_facecolor()),
                                        **_pixel_box(w.get_window_extent(renderer), height))
                                   for c, w in zip(categories, wedges)]
        metadata["labels_bbox"] = [dict(label=c, **_pixel_box(t.get_window_extent(renderer), height))
                                   for c, t in zip(categories, labels)]
        return Chart(image, metadata)
    boxes = _mark_boxes(kind, marks, ax, fig.dpi, renderer, height)
    metadata["points_bbox" if kind == "line" else "bars_bbox"] = boxes
    ticks = ax.get_yticklabels() if kind == "h_bar" else ax.get_xticklabels()
    label_boxes = [_pixel_box(t.get_window_extent(renderer), height) for t in ticks]
    key = "y_values_bbox" if kind == "h_bar" else "x_values_bbox"
    metadata[key] = _strips(kind, categories, boxes, label_boxes, plot)
    return Chart(image, metadata)


def _draw_references(ax: Any, kind: Kind, references: Sequence[tuple[str, Decimal]], font: dict[str, Any]) -> None:
    """Dashed (name, value) lines behind the marks, each labelled at the plot's edge."""
    for name, value in references:
        draw_line = ax.axvline if kind == "h_bar" else ax.axhline
        draw_line(float(value), color="#888888", linestyle="--", linewidth=1, zorder=0.5)
        where = dict(x=float(value), y=1.0, ha="left", va="top") if kind == "h_bar" else dict(
            x=1.0, y=float(value), ha="right", va="bottom")
        transform = ax.get_xaxis_transform() if kind == "h_bar" else ax.get_yaxis_transform()
        ax.text(s=f" {name}: {fmt(value)}", transform=transform, color="#666666", zorder=0.5,
                fontsize=font["size"] - 1, fontfamily=font["family"], **where)


def _mark_boxes(kind: Kind, marks: list[tuple[str, str, Any]], ax: Any, dpi: float, renderer: Any,
                height: int) -> list[dict[str, Any]]:
    """The pixel box of every bar (its artist's extent) or line point (a marker's square around its data point)."""
    if kind != "line":
        return [dict(label=c, series=s, color=to_hex(bar.get_facecolor()),
                     **_pixel_box(bar.get_window_extent(renderer), height)) for c, s, bar in marks]
    radius = MARKER_POINTS * dpi / 72 / 2
    boxes = []
    for category, name, (x, y, colour) in marks:
        px, py = ax.transData.transform((x, y))
        boxes.append(dict(label=category, series=name, color=colour, x1=int(px - radius),
                          y1=int(height - py - radius), x2=int(px + radius + 0.999),
                          y2=int(height - py + radius + 0.999)))
    return boxes


def _draw_axes_chart(ax: Any, kind: Kind, categories: Sequence[str], series: Sequence[str],
                     values: Sequence[Sequence[Decimal]], style: Style, value_labels: bool) -> list:
    """Bars or lines on axes; returns (category, series, bar artist or (x, y, colour) point) per mark."""
    font, n, m = style.font, len(categories), len(series)
    marks = []
    for s, name in enumerate(series):
        colour = style.palette[s % len(style.palette)]
        numbers = [float(v) for v in values[s]]
        if kind == "line":
            xs = list(range(n))
            ax.plot(xs, numbers, color=colour, marker="o", markersize=MARKER_POINTS, linewidth=1.5, label=name,
                    zorder=3)  # markers above every value label
            marks += [(categories[c], name, (xs[c], numbers[c], colour)) for c in range(n)]
            if value_labels:
                for c in range(n):
                    ax.annotate(fmt(values[s][c]), (xs[c], numbers[c]), xytext=(0, 6), textcoords="offset points",
                                ha="center", va="bottom", fontsize=font["size"] - 1, fontfamily=font["family"])
            continue
        width = 0.8 / m
        positions = [c - 0.4 + width * (s + 0.5) for c in range(n)]
        draw = ax.barh if kind == "h_bar" else ax.bar
        bars = draw(positions, numbers, width * 0.9, color=colour, label=name)
        marks += [(categories[c], name, bar) for c, bar in enumerate(bars)]
        if value_labels:
            ax.bar_label(bars, labels=[fmt(v) for v in values[s]], padding=2, fontsize=font["size"] - 1,
                         fontfamily=font["family"])
    (ax.set_yticks if kind == "h_bar" else ax.set_xticks)(range(n), list(categories), fontdict=font)
    if kind == "line":
        top = max(float(v) for row in values for v in row)
        ax.set_ylim(0, top * 1.15)  # room for value labels above the highest marker
        ax.set_xlim(-0.5, n - 0.5)
    if kind == "h_bar":
        ax.invert_yaxis()  # the first category on top, as people read
    if m > 1:
        ax.legend(fontsize=font["size"] - 1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return marks


def _draw_pie(ax: Any, categories: Sequence[str], values: Sequence[Decimal], style: Style,
              value_labels: bool) -> tuple[list, list]:
    """A pie with its labels outside; the wedge percentages printed inside when ``value_labels``."""
    numbers = [float(v) for v in values]
    colours = [style.palette[c % len(style.palette)] for c in range(len(categories))]
    text = {"fontsize": style.font["size"], "fontfamily": style.font["family"]}
    if value_labels:
        wedges, labels, _ = ax.pie(numbers, labels=list(categories), colors=colours, startangle=90,
                                   counterclock=False, autopct=lambda p: f"{p:.0f}%", pctdistance=0.7,
                                   textprops=text)
    else:
        wedges, labels = ax.pie(numbers, labels=list(categories), colors=colours, startangle=90,
                                counterclock=False, textprops=text)
    ax.set_aspect("equal")
    return wedges, labels


def _pixel_box(extent: Any, height: int) -> dict[str, int]:
    """A matplotlib display box (origin bottom-left) as an inclusive pixel box (origin top-left)."""
    return {"x1": int(extent.x0), "y1": int(height - extent.y1), "x2": int(extent.x1 + 0.999) - 1,
            "y2": int(height - extent.y0 + 0.999) - 1}


def _strips(kind: Kind, categories: Sequence[str], marks: list[dict], labels: list[dict], plot: dict) -> list[dict]:
    """One box per category: its marks and its tick label, across the plot, not past half the gap."""
    along, across = ("y", "x") if kind == "h_bar" else ("x", "y")
    spans = []
    for c, label in enumerate(categories):
        parts = [b for b in marks if b["label"] == label] + [labels[c]]
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


def check_labels(labels: str) -> None:
    if labels not in get_args(Labels):
        raise ValueError(f"labels must be one of {get_args(Labels)}, got {labels!r}")


def chart_sample(rng: random.Random, sample_id: str, kinds: Sequence[Kind] = KINDS,
                 families: Sequence[str] = FAMILIES, difficulty: str | None = None,
                 labels: Labels = "names") -> Sample:
    """One chart question: data, chart and question all drawn from ``rng``.

    ``labels="letters"`` names the categories A, B, C, ... in order: the easiest rung, where
    a label follows from a bar's position and a tiny model need not read text.
    """
    check_labels(labels)
    check_families(families)
    name = difficulty or rng.choice(CURRICULUM)
    if name not in LEVELS:
        raise ValueError(f"unknown difficulty {name!r}; choose from {list(LEVELS)}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown chart kind(s) {unknown or list(kinds)}; kinds: {list(KINDS)}")
    level = LEVELS[name]
    kind = rng.choice(tuple(kinds))
    allowed = [f for f in families if kind != "pie" or f in PIE_FAMILIES]
    if not allowed:
        raise ValueError(f"families {list(families)} have no question a {kind} chart can answer")
    low, high = level.categories
    if kind in ("grouped", "pie"):
        low, high = min(low, 6), min(high, 6)  # more groups or slices than 6 stop being readable
    n = rng.randint(low, high)
    if labels == "letters":
        categories = tuple(LETTERS[:n])
    else:
        categories = tuple(rng.choice(PERIODS)[:n] if kind == "line" else rng.sample(CATEGORIES, n))
    series = tuple(rng.sample(SERIES, rng.randint(2, 3))) if kind == "grouped" else ("Value",)
    if kind == "line" and level.distractors:
        series = tuple(rng.sample(SERIES, 1 + level.distractors))
    if kind == "pie":
        values = [_shares(rng, n)]
    else:
        decimals, top = rng.random() < 0.3, rng.choice(SCALES)  # one scale for every series of a chart
        values = [_distinct_values(rng, n, decimals, top, level.spread, level.top_gap) for _ in series]
    references = [] if kind == "pie" else _references(rng, values, level.distractors)
    chart = render(kind, categories, series, values, Style.draw(rng, kind == "pie", level.square),
                   value_labels=rng.random() < level.p_value_labels, references=references)
    family = rng.choice(allowed)
    s = rng.randrange(len(series))
    about = f" for {series[s]}" if len(series) > 1 else ""
    question = ask(family, categories, values[s], rng, about)
    metadata = {**chart.metadata, "family": family, "difficulty": name, "series_asked": series[s]}
    return Sample(sample_id, (chart.image,), question.text, (question.answer,), metadata, "synthetic_charts")


def _distinct_values(rng: random.Random, n: int, decimals: bool, top: int, spread: float = 1.0,
                     top_gap: tuple[float, float] | None = None) -> list[Decimal]:
    """n distinct values below ``top``, at least 2 apart in their last digit (so thresholds fit between).

    ``spread`` > 1: redrawn until the largest is >= spread x the runner-up and the smallest
    <= the next one / spread (for 4 values at 1.5, about one draw in eight qualifies).
    ``top_gap`` (lo, hi): instead, the largest is (1 + lo) to (1 + hi) x the runner-up, in the
    upper half of the scale, and every other value <= the runner-up / spread.
    """
    grid = range(2, top * (10 if decimals else 1), 2)
    while True:
        if top_gap:
            picks = _close_pair(rng, n, grid, spread, top_gap)
            if picks is None:
                continue
        else:
            picks = rng.sample(grid, n)
            ranked = sorted(picks)
            if not (spread <= 1 or n < 2 or (ranked[-1] >= spread * ranked[-2] and ranked[1] >= spread * ranked[0])):
                continue
        return [Decimal(p) / 10 if decimals else Decimal(p) for p in picks]


def _close_pair(rng: random.Random, n: int, grid: range, spread: float, top_gap: tuple[float, float]
                ) -> list[int] | None:
    """One draw for ``top_gap``: the two leaders, then the rest below the runner-up / spread, shuffled (None: retry)."""
    largest = rng.choice(grid[len(grid) // 2:])
    second = 2 * round(largest / (1 + rng.uniform(*top_gap)) / 2)
    lower = [v for v in grid if v * spread <= second]
    if not top_gap[0] <= largest / second - 1 <= top_gap[1] or len(lower) < n - 2:
        return None
    picks = [largest, second, *rng.sample(lower, n - 2)]
    rng.shuffle(picks)
    return picks


def _shares(rng: random.Random, n: int) -> list[Decimal]:
    """n distinct whole percentages, each at least 3, summing to 100."""
    while True:
        cuts = sorted(rng.sample(range(3, 98), n - 1))
        shares = [b - a for a, b in zip([0, *cuts], [*cuts, 100])]
        if min(shares) >= 3 and len(set(shares)) == n:
            return [Decimal(v) for v in shares]


def _references(rng: random.Random, values: Sequence[Sequence[Decimal]], count: int) -> list[tuple[str, Decimal]]:
    """``count`` named reference values inside the data's range (distractors)."""
    top = max(v for row in values for v in row)
    names = rng.sample(REFERENCES, count)
    return [(name, Decimal(rng.randint(1, max(1, int(top))))) for name in names]


@task("synthetic_charts", reward="chartqa_relaxed")
def synthetic_charts(seed: int = 0, kinds: Sequence[Kind] = KINDS, families: Sequence[str] = FAMILIES,
                     difficulty: str | None = None, labels: Labels = "names", workers: int = 1) -> Iterator[Sample]:
    """An endless, seeded stream of chart questions; sample k depends only on (seed, k).

    ``workers`` > 1 renders ahead in that many processes (same samples, same order).
    """
    chart_sample(random.Random(f"{seed}/0"), "check", kinds, families, difficulty, labels)  # bad args fail here
    return indexed_stream(partial(chart_at, seed, kinds=tuple(kinds), families=tuple(families),
                                  difficulty=difficulty, labels=labels), workers)


def chart_at(seed: int, index: int, kinds: Sequence[Kind] = KINDS, families: Sequence[str] = FAMILIES,
             difficulty: str | None = None, labels: Labels = "names") -> Sample:
    """Sample ``index`` of the stream ``seed`` (any process can make any sample)."""
    return chart_sample(random.Random(f"{seed}/{index}"), f"chart-{seed}-{index}", kinds, families, difficulty,
                        labels)
