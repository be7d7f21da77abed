"""Pixel-level tests: each tool changes exactly the pixels its rule names, and no others."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from vlrl.builtin.tasks.charts import chart_sample
from vlrl.builtin.tools import draw, focus
from vlrl.builtin.tools.bars import compare_bars
from vlrl.tool import ToolError

INSET, WIDTH, ALPHA = 2, 3, 0.3


def noise(w: int = 120, h: int = 90, seed: int = 0) -> Image.Image:
    """Values below 200: white and pure red are never already there, so every edit shows."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 200, (h, w, 3), dtype=np.uint8))


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def region(shape, rect) -> np.ndarray:
    x1, y1, x2, y2 = rect
    m = np.zeros(shape[:2], dtype=bool)
    m[max(y1, 0) : y2 + 1, max(x1, 0) : x2 + 1] = True
    return m


def inset(box: dict, size, d: int = INSET) -> tuple[int, int, int, int]:
    w, h = size
    return (max(round(box["x1"]) + d, 0), max(round(box["y1"]) + d, 0),
            min(round(box["x2"]) - d, w - 1), min(round(box["y2"]) - d, h - 1))


def border(shape, rect, width=WIDTH) -> np.ndarray:
    x1, y1, x2, y2 = rect
    return region(shape, rect) & ~region(shape, (x1 + width, y1 + width, x2 - width, y2 - width))


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    assert before.size == after.size
    return (arr(before) != arr(after)).any(axis=-1)


# Columns of a small table: name -> box, in the list form that keeps duplicates.
COLUMNS = [
    {"label": "Year", "x1": 5, "y1": 5, "x2": 40, "y2": 84},
    {"label": "Team", "x1": 40, "y1": 5, "x2": 80, "y2": 84},
    {"label": "Score", "x1": 80, "y1": 5, "x2": 130, "y2": 84},  # runs past the 120 px edge
]
ROWS = [
    {"label": "Year", "x1": 5, "y1": 5, "x2": 114, "y2": 25},  # header
    {"label": "1999", "x1": 5, "y1": 25, "x2": 114, "y2": 45},
    {"label": "2001", "x1": 5, "y1": 45, "x2": 114, "y2": 65},
    {"label": "1999", "x1": 5, "y1": 65, "x2": 114, "y2": 85},  # a repeated row starter
]


@pytest.mark.parametrize("target", ["columns", "x_values", "y_values"])
def test_mask_whitens_exactly_the_other_regions(target):
    image = noise()
    tool = getattr(focus, f"focus_on_{target}_with_mask")
    out = tool(image, ["Team"], COLUMNS)
    a = arr(image)
    expected = region(a.shape, inset(COLUMNS[0], image.size)) | region(a.shape, inset(COLUMNS[2], image.size))
    assert (changed(image, out) == expected).all()
    assert (arr(out)[expected] == 255).all()


def test_mask_rows_keeps_the_header_and_every_duplicate():
    image = noise()
    out = focus.focus_on_rows_with_mask(image, ["1999"], ROWS)
    a = arr(image)
    assert (changed(image, out) == region(a.shape, inset(ROWS[2], image.size))).all()  # only "2001" goes


def test_mask_that_would_hide_everything_returns_the_image_unchanged():
    image = noise()
    for tool, boxes in [(focus.focus_on_columns_with_mask, COLUMNS), (focus.focus_on_rows_with_mask, ROWS)]:
        out = tool(image, [], boxes)
        assert not changed(image, out).any() and out is not image


@pytest.mark.parametrize("target, boxes, labels, picked", [
    ("columns", COLUMNS, ["Year", "Score"], [0, 2]),
    ("rows", ROWS, ["1999"], [1, 3]),
    ("x_values", COLUMNS, ["Team"], [1]),
    ("y_values", ROWS, ["2001"], [2]),
])
def test_draw_outlines_and_highlight_tints_the_named_regions(target, boxes, labels, picked):
    image = noise()
    a = arr(image)
    rects = [inset(boxes[i], image.size) for i in picked]

    drawn = getattr(focus, f"focus_on_{target}_with_draw")(image, labels, boxes)
    outline = np.logical_or.reduce([border(a.shape, r) for r in rects])
    assert (changed(image, drawn) == outline).all()
    assert (arr(drawn)[outline] == [255, 0, 0]).all()

    lit = getattr(focus, f"focus_on_{target}_with_highlight")(image, labels, boxes)
    inside = np.logical_or.reduce([region(a.shape, r) for r in rects])
    assert (changed(image, lit) == inside).all()
    want = np.rint(a * (1 - ALPHA) + np.array([255, 0, 0]) * ALPHA)
    assert np.abs(arr(lit)[inside] - want[inside]).max() <= 1


def test_unknown_labels_are_an_error_the_model_can_read():
    with pytest.raises(ToolError, match=r"unknown label\(s\) \['Coach'\]; the image has \['Score', 'Team', 'Year'\]"):
        focus.focus_on_columns_with_draw(noise(), ["Coach"], COLUMNS)


def test_relative_boxes_and_the_dict_form():
    image = noise(100, 50)
    rel = {"A": {"x1": 0.0, "y1": 0.0, "x2": 0.5, "y2": 1.0}, "B": {"x1": 0.5, "y1": 0.0, "x2": 1.0, "y2": 1.0}}
    out = focus.focus_on_columns_with_mask(image, ["B"], rel)
    a = arr(image)
    assert (changed(image, out) == region(a.shape, inset({"x1": 0, "y1": 0, "x2": 50, "y2": 50}, image.size))).all()


def test_real_chartqa_bars_and_wtq_tables(realdata):
    rows = [json.loads(line) for line in (realdata / "chartqa_test_refocus_bbox" / "test.jsonl").open()]
    for source, axis in [("chartqa_v_bar", "x_values"), ("chartqa_h_bar", "y_values")]:
        row = next(r for r in rows if r["source"] == source)
        image = Image.open(realdata / "chartqa_test_refocus_bbox" / row["image"]).convert("RGB")
        boxes = [{"label": label, **box} for label, box in zip(row[axis], row[f"{axis}_bbox"])]
        out = getattr(focus, f"focus_on_{axis}_with_mask")(image, [row[axis][0]], boxes)
        hidden = np.logical_or.reduce([region(arr(image).shape, inset(b, image.size)) for b in boxes[1:]])
        assert not changed(image, out)[~hidden].any()  # nothing outside the other bars' boxes
        assert (arr(out)[hidden] == 255).all()
    table = json.loads((realdata / "wtq_vwtq_rendered_tables" / "data.jsonl").open().readline())
    image = Image.open(realdata / "wtq_vwtq_rendered_tables" / table["figure_path"]).convert("RGB")
    cols = [{"label": n, **b} for n, b in zip(table["column_headers"], table["columns_bbox"])]  # normalised
    out = focus.focus_on_columns_with_mask(image, [table["column_headers"][1]], cols)
    kept = region(arr(image).shape, inset(table["columns_bbox_px"][1], image.size, d=INSET + 1))
    assert not changed(image, out)[kept].any() and changed(image, out).any()
    rows_px = [{"label": n, **b} for n, b in zip(table["row_starters"], table["rows_bbox_px"])]
    out = focus.focus_on_rows_with_mask(image, [table["row_starters"][3]], rows_px)
    assert not changed(image, out)[region(arr(image).shape, inset(rows_px[0], image.size))].any()  # header


def test_crop_and_zoom():
    image = noise()
    a = arr(image)
    assert (arr(draw.crop(image, [10, 20, 49, 59])) == a[20:60, 10:50]).all()
    assert (arr(draw.crop(image, [0.5, 0.0, 1.0, 0.5], relative=True)) == a[0:46, 60:120]).all()
    zoomed = draw.zoom_in(image, [10, 20, 49, 59], factor=3)
    assert zoomed.size == (120, 120)
    with pytest.raises(ToolError, match="factor must be between 1 and 8"):
        draw.zoom_in(image, [0, 0, 10, 10], factor=20)
    with pytest.raises(ToolError, match="lies outside the 120x90 image"):
        draw.crop(image, [200, 200, 300, 300])
    with pytest.raises(ToolError, match="x2 < x1"):
        draw.crop(image, [50, 10, 20, 30])


def test_draw_box_line_and_highlight_region():
    image = noise()
    a = arr(image)
    boxed = draw.draw_box(image, [10, 10, 60, 50], color="blue", width=2)
    band = border(a.shape, (10, 10, 60, 50), width=2)
    assert (changed(image, boxed) == band).all() and (arr(boxed)[band] == [0, 0, 255]).all()

    line = draw.draw_line(image, y=40, width=3)
    rows = np.zeros(a.shape[:2], dtype=bool)
    rows[39:42, :] = True
    assert (changed(image, line) == rows).all() and (arr(line)[rows] == [255, 0, 0]).all()
    vline = draw.draw_line(image, x=0.5, relative=True, width=1)
    cols = np.zeros(a.shape[:2], dtype=bool)
    cols[:, round(0.5 * 119)] = True
    assert (changed(image, vline) == cols).all()
    with pytest.raises(ToolError, match="exactly one of y"):
        draw.draw_line(image, y=3, x=4)
    with pytest.raises(ToolError, match="y=500 lies outside"):
        draw.draw_line(image, y=500)

    lit = draw.highlight_region(image, [0, 0, 29, 19], color="green")
    inside = region(a.shape, (0, 0, 29, 19))
    assert (changed(image, lit) == inside).all()
    want = np.rint(a * (1 - ALPHA) + np.array([0, 160, 0]) * ALPHA)
    assert np.abs(arr(lit)[inside] - want[inside]).max() <= 1


def test_tools_never_modify_their_input():
    image = noise()
    before = arr(image).copy()
    focus.focus_on_columns_with_mask(image, ["Team"], COLUMNS)
    draw.draw_box(image, [1, 1, 20, 20])
    assert (arr(image) == before).all()


def bar_runs(image: Image.Image, colour: str, vertical: bool) -> list[tuple[int, int]]:
    """(where the run begins across, where it ends along) for each run of ``colour``, read off the pixels: for
    vertical bars, each run of columns' first column and its top row, left to right; for horizontal bars, each
    run of rows' first row and its last column, top to bottom."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    mask = (np.abs(arr(image) - rgb).sum(axis=2) < 60)
    if not vertical:
        mask = mask.T[::-1]  # rows become columns (top to bottom), the right end of a row the top of a column
    lines = mask.any(axis=0)
    runs, at = [], 0
    while at < len(lines):
        if not lines[at]:
            at += 1
            continue
        start = at
        while at < len(lines) and lines[at]:
            at += 1
        top = int(np.argmax(mask[:, start:at].any(axis=1)))
        runs.append((start, top if vertical else mask.shape[0] - 1 - top))
    return runs


@pytest.mark.parametrize("kind", ["v_bar", "h_bar"])
def test_compare_bars_enlarges_the_difference_between_the_named_bars_ends_and_keeps_their_places(kind):
    vertical = kind == "v_bar"
    for seed in range(6):
        s = chart_sample(random.Random(seed), "c", kinds=[kind], families=["largest"], difficulty="close",
                         labels="letters")
        cats, values = s.metadata["table"]["categories"], [float(v) for v in s.metadata["table"]["series"]["Value"]]
        leaders = sorted(sorted(range(len(cats)), key=lambda c: -values[c])[:2])  # in the chart's order
        boxes = [b for c in leaders for b in s.metadata["bars_bbox"] if b["label"] == cats[c]]
        out = compare_bars.target(s.images[0], [cats[c] for c in leaders], s.metadata["bars_bbox"])
        assert out.size == s.images[0].size
        runs = bar_runs(out, boxes[0]["color"], vertical)
        assert len(runs) == 2, runs  # the two named bars; the others end short of the band
        # each where it stood in the chart (the first column of a vertical bar, the first row of a horizontal one)
        assert [start for start, _ in runs] == pytest.approx([b["x1" if vertical else "y1"] for b in boxes], abs=2)
        ends = [end for _, end in runs]
        before = [b["y1"] if vertical else b["x2"] for b in boxes]
        longer_first = values[leaders[0]] > values[leaders[1]]
        assert ((ends[0] < ends[1]) if vertical else (ends[0] > ends[1])) == longer_first
        assert abs(ends[0] - ends[1]) >= 3 * abs(before[0] - before[1])  # at least three times as far apart


def test_compare_bars_names_what_it_cannot_find():
    boxes = [{"label": "A", "x1": 10, "y1": 20, "x2": 30, "y2": 80}, {"label": "B", "x1": 40, "y1": 25, "x2": 60,
                                                                      "y2": 80}]
    with pytest.raises(ToolError, match=r"unknown bar\(s\) \['Z'\]; the image has \['A', 'B'\]"):
        compare_bars.target(noise(), ["A", "Z"], boxes)
    with pytest.raises(ToolError, match="name at least one bar"):
        compare_bars.target(noise(), [], boxes)
