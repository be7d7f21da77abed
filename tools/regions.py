"""Boxes in the shapes datasets store them, as pixel rectangles on one image.

Metadata boxes come as ``{label: {x1, y1, x2, y2}}`` (VTool-R1 parquet), as a list of
``{"label": ..., "x1": ...}`` (vlrl's own form, which keeps duplicate labels: 56 of 150
real WikiTableQuestions tables repeat a row starter), or as ``[x1, y1, x2, y2]``. Values
all within [0, 1] are read as fractions of the image size (ReFOCUS' table boxes).
Rectangles are clamped to the image (real ChartQA boxes overrun it) and inclusive.
``TARGETS`` names the focus tools' regions; it lives here, not in ``tools.focus``, so the
scripted agents can read it without registering the focus tools.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from vlrl.tool import ToolError

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 inclusive pixel bounds

# target -> (metadata key, what the labels are, whether the first region is a header to keep)
TARGETS = {
    "columns": ("columns_bbox", "table columns (named by their header)", False),
    "rows": ("rows_bbox", "table rows (named by the text of their first cell)", True),
    "x_values": ("x_values_bbox", "chart categories (named by their x-axis label)", False),
    "y_values": ("y_values_bbox", "chart categories (named by their y-axis label)", False),
}


def labeled_rects(value: Any, size: tuple[int, int], inset: int = 0) -> list[tuple[str, Rect | None]]:
    """(label, rectangle) pairs in order; a rectangle inset to nothing is None."""
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = []
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping) or "label" not in entry:
                raise ToolError(f"box {i} has no 'label': {entry!r}")
            items.append((str(entry["label"]), entry))
    else:
        raise ToolError(f"expected labelled boxes, got {type(value).__name__}")
    relative = all(is_relative(box_coords(box)) for _, box in items)
    return [(label, to_rect(box_coords(box), size, relative, inset)) for label, box in items]


def to_rect(coords: Sequence[float], size: tuple[int, int], relative: bool = False, inset: int = 0) -> Rect | None:
    """An inclusive pixel rectangle inside the image, or None when nothing is left of it."""
    w, h = size
    x1, y1, x2, y2 = (float(c) for c in coords)
    if relative:
        x1, x2, y1, y2 = x1 * w, x2 * w, y1 * h, y2 * h
    if x2 < x1 or y2 < y1:
        raise ToolError(f"box {[x1, y1, x2, y2]} has x2 < x1 or y2 < y1")
    left, top = max(int(round(x1)) + inset, 0), max(int(round(y1)) + inset, 0)
    right, bottom = min(int(round(x2)) - inset, w - 1), min(int(round(y2)) - inset, h - 1)
    if right < left or bottom < top:
        return None
    return left, top, right, bottom


def box_arg(box: Sequence[float], image: Image.Image, relative: bool) -> Rect:
    """A model-given [x1, y1, x2, y2] as a rectangle; ToolError when it misses the image."""
    if relative and not is_relative(box):
        raise ToolError(f"relative box {list(box)} must hold fractions in [0, 1]")
    rect = to_rect(box, image.size, relative)
    if rect is None:
        raise ToolError(f"box {list(box)} lies outside the {image.width}x{image.height} image")
    return rect


def pixels(image: Image.Image) -> np.ndarray:
    """A writable (H, W, 3) uint8 copy of the image."""
    return np.array(image.convert("RGB"), dtype=np.uint8)


def fill(arr: np.ndarray, rect: Rect, color: Sequence[int]) -> None:
    x1, y1, x2, y2 = rect
    arr[y1 : y2 + 1, x1 : x2 + 1] = color


def outline(arr: np.ndarray, rect: Rect, color: Sequence[int], width: int) -> None:
    """A border of ``width`` pixels drawn inside ``rect``."""
    x1, y1, x2, y2 = rect
    for band in ((x1, y1, x2, min(y1 + width - 1, y2)), (x1, max(y2 - width + 1, y1), x2, y2),
                 (x1, y1, min(x1 + width - 1, x2), y2), (max(x2 - width + 1, x1), y1, x2, y2)):
        fill(arr, band, color)


def tint(arr: np.ndarray, rect: Rect, color: Sequence[int] = (255, 0, 0), alpha: float = 0.3) -> None:
    """Blend ``color`` over ``rect`` with opacity ``alpha``."""
    x1, y1, x2, y2 = rect
    region = arr[y1 : y2 + 1, x1 : x2 + 1].astype(np.float32)
    blended = region * (1 - alpha) + np.asarray(color, dtype=np.float32) * alpha
    arr[y1 : y2 + 1, x1 : x2 + 1] = np.rint(blended).astype(np.uint8)


def box_coords(box: Any) -> list[float]:
    """x1, y1, x2, y2 of a box given as {x1, y1, x2, y2} or [x1, y1, x2, y2]."""
    if isinstance(box, Mapping):
        try:
            return [float(box[k]) for k in ("x1", "y1", "x2", "y2")]
        except (KeyError, TypeError, ValueError):
            raise ToolError(f"box {box!r} needs numeric x1, y1, x2, y2") from None
    if isinstance(box, Sequence) and not isinstance(box, (str, bytes)) and len(box) == 4:
        try:
            return [float(c) for c in box]
        except (TypeError, ValueError):
            raise ToolError(f"box {box!r} needs numeric x1, y1, x2, y2") from None
    raise ToolError(f"box {box!r} is neither {{x1, y1, x2, y2}} nor [x1, y1, x2, y2]")


def is_relative(coords: Sequence[float]) -> bool:
    """All coordinates within [0, 1]: fractions of the image size (ReFOCUS table boxes)."""
    return all(0.0 <= float(c) <= 1.0 for c in coords)
