"""Synthetic tables rendered with PIL, with exact answers and the boxes the table focus tools need.

A table has a header row, a first column of row starters (the names questions ask about),
the numeric column the question is about, and distractor columns (numbers and text the
question does not need; more as the difficulty rises). Boxes are recorded while drawing,
in pixels of the image, in the ReFOCUS ``tablevqa`` schema:
- ``column_headers`` and ``columns_bbox``: one box per column, spanning the whole table
  height, the header included;
- ``row_starters`` and ``rows_bbox``: one box per row across the whole table, **row 0 is
  the header row** (as in ReFOCUS; the focus tools never mask it);
- ``cells_bbox``: rows x columns of ``[x1, y1, x2, y2]``; ``table_bbox``;
- ``cells``: the text of every cell, header first (never shown to the model), from which
  the answers can be re-derived independently.
Text is dark, grid lines are mid-grey and backgrounds light, so a test can check every
glyph against its cell.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Iterator, Sequence

from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from vlrl.builtin.tasks.charts import (
    CATEGORIES,
    CURRICULUM,
    LETTERS,
    LEVELS,
    SCALES,
    Labels,
    _distinct_values,
    check_labels,
)
from vlrl.builtin.tasks.questions import FAMILIES, ask, check_families, fmt
from vlrl.builtin.tasks.stream import indexed_stream
from vlrl.task import task
from vlrl.types import Sample

NUMERIC_COLUMNS = ("Sales", "Exports", "Stock", "Budget", "Visitors", "Output", "Score", "Staff", "Orders", "Profit")
TEXT_COLUMNS = {
    "Region": ("North", "South", "East", "West", "Central"),
    "Status": ("Open", "Closed", "Pending", "Active"),
    "Grade": ("A", "B", "C", "D"),
    "Owner": ("Ana", "Ben", "Chen", "Dara", "Eli", "Femi"),
}
FIRST_HEADERS = ("Name", "Item", "Country", "Product")
FONTS = ("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono")
HEADER_FILLS = ("#dbe8f6", "#e6e6e6", "#fbe5c8", "#d9f0d9")
ZEBRA_FILLS = ("#f5f5f5", "#f2f7fc", "#ffffff")
TEXT = (20, 20, 20)
GRID = (150, 150, 150)
DATA_BAR = "#1b5e9f"  # dark: light ones left a model trained from scratch at chance (README, starter tables)
BAR_ROOM = 60  # px a data-bar column gets beyond its numbers, for the bar beside them


@dataclass(frozen=True)
class TableStyle:
    """How a table looks; drawn from the sample's rng."""

    font: str
    size: int
    pad: tuple[int, int]  # horizontal, vertical padding inside a cell
    header_fill: str
    zebra: str
    grid: bool  # every cell boxed, or only lines under the header and around the table
    margin: int

    @classmethod
    def draw(cls, rng: random.Random) -> TableStyle:
        return cls(rng.choice(FONTS), rng.choice((13, 14, 15, 16)), (rng.choice((8, 10, 14)), rng.choice((5, 7, 9))),
                   rng.choice(HEADER_FILLS), rng.choice(ZEBRA_FILLS), rng.random() < 0.6, rng.choice((12, 20, 28)))


@dataclass(frozen=True)
class Frame:
    """A fixed layout (the starter rung's): a square image of ``size`` px whose table has a
    first column ``first`` px wide, the other columns sharing the rest evenly, and ``slots``
    rows of one height, the header included. Every row and column lands on the same pixels
    whatever the text, so a row's place in the image names it, as a bar's place names it in
    a chart: a model trained from scratch learns that where it cannot learn to find rows
    that move from table to table."""

    size: int = 280
    margin: int = 14
    first: int = 100
    slots: int = 5

    def layout(self, widths: Sequence[int], rows: int, text_height: int) -> tuple[list[int], list[int],
                                                                               tuple[int, int]]:
        """Column and row edges, and the image size, for text needing ``widths`` px per column
        and ``text_height`` px per row."""
        if rows > self.slots:
            raise ValueError(f"a frame of {self.slots} row slots cannot hold {rows} rows")
        if len(widths) < 2:
            raise ValueError(f"a frame holds a first column and at least one more, got {len(widths)} column(s)")
        inner = self.size - 2 * self.margin
        if text_height > inner // self.slots:
            raise ValueError(f"text {text_height} px tall does not fit the frame's rows of {inner // self.slots} px")
        rest = (inner - self.first) // (len(widths) - 1)
        xs = [self.margin, self.margin + self.first]
        xs += [xs[-1] + rest * k for k in range(1, len(widths))]
        for c, needed in enumerate(widths):
            if needed > xs[c + 1] - xs[c]:
                raise ValueError(f"column {c} needs {needed} px, the frame gives it {xs[c + 1] - xs[c]}")
        height = inner // self.slots
        return xs, [self.margin + r * height for r in range(rows + 1)], (self.size, self.size)


@lru_cache(maxsize=None)
def _font(family: str, size: int, bold: bool) -> ImageFont.FreeTypeFont:
    props = font_manager.FontProperties(family=family, weight="bold" if bold else "normal")
    return ImageFont.truetype(font_manager.findfont(props, fallback_to_default=True), size)


def render_table(cells: Sequence[Sequence[str]], style: TableStyle, numeric: Sequence[bool],
                 bars: dict[int, Sequence[float]] | None = None,
                 frame: Frame | None = None) -> tuple[Image.Image, dict[str, Any]]:
    """Draw ``cells`` (header row first) and return the image with its boxes.

    ``bars``: column -> one value per body row; each of those cells gets a data bar from its
    left edge, as long as its value is a share of the column's largest, and stopping short
    of the column's widest number (spreadsheet data bars: the order of the values is
    visible without reading a digit, and every digit stays on white).
    ``frame``: draw on that fixed grid instead of sizing cells to their text.
    """
    body, head = _font(style.font, style.size, False), _font(style.font, style.size, True)
    px = style.pad[0]
    n_cols = len(cells[0])
    text_widths = [max((int(body.getlength(row[c])) for row in cells[1:]), default=0) for c in range(n_cols)]
    widths = [max(int(head.getlength(cells[0][c])), text_widths[c] + (BAR_ROOM if bars and c in bars else 0)) + 2 * px
              for c in range(n_cols)]
    xs, ys, size, py = _grid(widths, len(cells), sum(head.getmetrics()), style, frame)  # text: ascent + descent
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for r in range(len(cells)):
        fill = style.header_fill if r == 0 else (style.zebra if r % 2 == 0 else "#ffffff")
        draw.rectangle((xs[0], ys[r], xs[-1], ys[r + 1]), fill=fill)
    for r, row in enumerate(cells):
        font = head if r == 0 else body
        for c, text in enumerate(row):
            x1, y1, x2, y2 = xs[c], ys[r], xs[c + 1], ys[r + 1]
            if bars and c in bars and r > 0:
                share = bars[c][r - 1] / max(max(bars[c]), 1e-9)
                room = x2 - x1 - text_widths[c] - 2 * px - 2
                draw.rectangle((x1 + 2, y1 + 3, x1 + 2 + max(1, round(share * room)), y2 - 3), fill=DATA_BAR)
            width = font.getlength(text)
            x = x2 - px - width if numeric[c] and r > 0 else x1 + px  # numbers right-aligned, as people set them
            draw.text((x, y1 + py), text, fill=TEXT, font=font)
    if style.grid:
        for x in xs:
            draw.line((x, ys[0], x, ys[-1]), fill=GRID)
        for y in ys:
            draw.line((xs[0], y, xs[-1], y), fill=GRID)
    else:
        draw.rectangle((xs[0], ys[0], xs[-1], ys[-1]), outline=GRID)
        draw.line((xs[0], ys[1], xs[-1], ys[1]), fill=GRID)
    return image, _table_metadata(cells, xs, ys)


def _grid(widths: Sequence[int], rows: int, text_height: int, style: TableStyle,
          frame: Frame | None) -> tuple[list[int], list[int], tuple[int, int], int]:
    """Column edges, row edges, the image size and the text's top padding: on ``frame``'s fixed grid (the text
    centred in its row), or sized to the text."""
    if frame:
        xs, ys, size = frame.layout(widths, rows, text_height)
        return xs, ys, size, (ys[1] - ys[0] - text_height) // 2
    py = style.pad[1]
    row_height = text_height + 2 * py
    xs = [style.margin]
    for w in widths:
        xs.append(xs[-1] + w)
    ys = [style.margin + r * row_height for r in range(rows + 1)]
    return xs, ys, (xs[-1] + style.margin + 1, ys[-1] + style.margin + 1), py


def _table_metadata(cells: Sequence[Sequence[str]], xs: Sequence[int], ys: Sequence[int]) -> dict[str, Any]:
    """The boxes of the columns, the rows, every cell and the table, with the header and the cells' text."""
    top, bottom, left, right = ys[0], ys[-1], xs[0], xs[-1]
    return {
        "type": "table",
        "column_headers": list(cells[0]),
        "columns_bbox": [{"label": cells[0][c], "x1": xs[c], "y1": top, "x2": xs[c + 1], "y2": bottom}
                         for c in range(len(cells[0]))],
        "row_starters": [row[0] for row in cells],
        "rows_bbox": [{"label": row[0], "x1": left, "y1": ys[r], "x2": right, "y2": ys[r + 1]}
                      for r, row in enumerate(cells)],
        "cells_bbox": [[[xs[c], ys[r], xs[c + 1], ys[r + 1]] for c in range(len(row))] for r, row in enumerate(cells)],
        "table_bbox": {"x1": left, "y1": top, "x2": right, "y2": bottom},
        "cells": [list(row) for row in cells],
    }


def table_sample(rng: random.Random, sample_id: str, families: Sequence[str] = FAMILIES,
                 difficulty: str | None = None, labels: Labels = "names") -> Sample:
    """One table question: data, table and question all drawn from ``rng``.

    ``labels="letters"`` names the rows A, B, C, ... from the top, as charts name their bars.
    """
    check_labels(labels)
    name = difficulty or rng.choice(CURRICULUM)
    if name not in LEVELS:
        raise ValueError(f"unknown difficulty {name!r}; choose from {list(LEVELS)}")
    check_families(families)
    level = LEVELS[name]
    n = rng.randint(*level.categories)
    starters = list(LETTERS[:n]) if labels == "letters" else rng.sample(CATEGORIES, n)
    extra = level.distractors + rng.randint(0, level.spare_columns)
    numeric_names = rng.sample(NUMERIC_COLUMNS, 1 + rng.randint(0, extra))
    text_names = rng.sample(sorted(TEXT_COLUMNS), 1 + extra - len(numeric_names))
    columns: list[tuple[str, list[str], bool]] = []
    values = {}
    for column in numeric_names:
        values[column] = _distinct_values(rng, n, rng.random() < 0.3, rng.choice(SCALES), level.spread)
        columns.append((column, [fmt(v) for v in values[column]], True))
    for column in text_names:
        columns.append((column, [rng.choice(TEXT_COLUMNS[column]) for _ in range(n)], False))
    rng.shuffle(columns)
    header = [rng.choice(FIRST_HEADERS), *(c[0] for c in columns)]
    cells = [header] + [[starters[r], *(c[1][r] for c in columns)] for r in range(n)]
    bars = {1 + k: [float(v) for v in values[c[0]]] for k, c in enumerate(columns) if c[2]} if level.data_bars else None
    frame = Frame(slots=level.categories[1] + 1) if level.square else None
    image, metadata = render_table(cells, TableStyle.draw(rng), [False, *(c[2] for c in columns)], bars, frame)
    asked = rng.choice(numeric_names)
    about = f" for {asked}" if len(numeric_names) > 1 else ""
    family = rng.choice(tuple(families))
    question = ask(family, starters, values[asked], rng, about)
    metadata |= {"family": family, "difficulty": name, "column_asked": asked}
    return Sample(sample_id, (image,), question.text, (question.answer,), metadata, "synthetic_tables")


@task("synthetic_tables", reward="chartqa_relaxed")
def synthetic_tables(seed: int = 0, families: Sequence[str] = FAMILIES, difficulty: str | None = None,
                     labels: Labels = "names", workers: int = 1) -> Iterator[Sample]:
    """An endless, seeded stream of table questions; sample k depends only on (seed, k).

    ``workers`` > 1 renders ahead in that many processes (same samples, same order).
    """
    table_sample(random.Random(f"table/{seed}/0"), "check", families, difficulty, labels)  # bad args fail here
    return indexed_stream(partial(table_at, seed, families=tuple(families), difficulty=difficulty, labels=labels),
                          workers)


def table_at(seed: int, index: int, families: Sequence[str] = FAMILIES, difficulty: str | None = None,
             labels: Labels = "names") -> Sample:
    """Sample ``index`` of the stream ``seed`` (any process can make any sample)."""
    return table_sample(random.Random(f"table/{seed}/{index}"), f"table-{seed}-{index}", families, difficulty,
                        labels)
