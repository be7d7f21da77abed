"""General image-editing tools: crop, zoom_in, draw_box, draw_line, highlight_region.

Boxes are ``[x1, y1, x2, y2]`` in pixels, or fractions of the image size with
``relative=true``.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image

from vlrl.builtin.tools.regions import box_arg, fill, outline, pixels, tint
from vlrl.tool import Box, ToolError, tool

MAX_ZOOMED_PIXELS = 1600 * 1600
COLORS = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "black": (0, 0, 0)}
Color = Literal["red", "green", "blue", "black"]


@tool
def crop(image: Image.Image, box: Box, relative: bool = False) -> Image.Image:
    """Cut out one region of the image.

    Args:
        image: the image to crop (image_1, image_2, ...).
        box: [x1, y1, x2, y2] of the region to keep.
        relative: read the box as fractions of the width and height.
    """
    x1, y1, x2, y2 = box_arg(box, image, relative)
    return image.crop((x1, y1, x2 + 1, y2 + 1))


@tool
def zoom_in(image: Image.Image, box: Box, factor: float = 2.0, relative: bool = False) -> Image.Image:
    """Cut out one region and enlarge it, to read small text or compare close values.

    Args:
        image: the image to zoom into (image_1, image_2, ...).
        box: [x1, y1, x2, y2] of the region to enlarge.
        factor: how many times larger, from 1 to 8.
        relative: read the box as fractions of the width and height.
    """
    if not 1.0 <= factor <= 8.0:
        raise ToolError(f"zoom_in: factor must be between 1 and 8, got {factor}")
    region = crop(image, box, relative)
    w, h = round(region.width * factor), round(region.height * factor)
    if w * h > MAX_ZOOMED_PIXELS:
        raise ToolError(f"zoom_in: a {w}x{h} result is too large; choose a smaller box or factor")
    return region.resize((w, h), Image.BICUBIC)


@tool
def draw_box(image: Image.Image, box: Box, color: Color = "red", width: int = 3, relative: bool = False) -> Image.Image:
    """Draw a rectangle around a region to mark it.

    Args:
        image: the image to draw on (image_1, image_2, ...).
        box: [x1, y1, x2, y2] of the region to mark.
        color: the line colour.
        width: the line width in pixels, 1 to 20.
        relative: read the box as fractions of the width and height.
    """
    _check_width(width)
    arr = pixels(image)
    outline(arr, box_arg(box, image, relative), COLORS[color], width)
    return Image.fromarray(arr)


@tool
def draw_line(
    image: Image.Image,
    y: float | None = None,
    x: float | None = None,
    color: Color = "red",
    width: int = 2,
    relative: bool = False,
) -> Image.Image:
    """Draw a horizontal reference line at height y (to compare bars against a level), or a
    vertical one at x.

    Args:
        image: the image to draw on (image_1, image_2, ...).
        y: the row of a horizontal line.
        x: the column of a vertical line.
        color: the line colour.
        width: the line width in pixels, 1 to 20.
        relative: read y or x as a fraction of the height or width.
    """
    if (y is None) == (x is None):
        raise ToolError("draw_line: give exactly one of y (horizontal line) or x (vertical line)")
    _check_width(width)
    arr = pixels(image)
    w, h = image.size
    pos = y if y is not None else x
    limit = h if y is not None else w
    at = round(pos * (limit - 1)) if relative else round(pos)
    if not 0 <= at < limit or (relative and not 0 <= pos <= 1):
        raise ToolError(f"draw_line: {'y' if y is not None else 'x'}={pos} lies outside the {w}x{h} image")
    lo, hi = max(at - width // 2, 0), min(at - width // 2 + width - 1, limit - 1)
    band = (0, lo, w - 1, hi) if y is not None else (lo, 0, hi, h - 1)
    fill(arr, band, COLORS[color])
    return Image.fromarray(arr)


@tool
def highlight_region(image: Image.Image, box: Box, color: Color = "red", relative: bool = False) -> Image.Image:
    """Tint a region with a translucent colour, keeping what is under it readable.

    Args:
        image: the image to edit (image_1, image_2, ...).
        box: [x1, y1, x2, y2] of the region to tint.
        color: the tint colour.
        relative: read the box as fractions of the width and height.
    """
    arr = pixels(image)
    tint(arr, box_arg(box, image, relative), COLORS[color])
    return Image.fromarray(arr)


def _check_width(width: int) -> None:
    if not 1 <= width <= 20:
        raise ToolError(f"line width must be between 1 and 20, got {width}")
