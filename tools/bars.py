"""A tool for bars too close to tell apart at a glance: ``compare_bars`` enlarges their ends.

The model names bars by their category label; the boxes come from the sample's ``bars_bbox``
(each bar's pixel box, as `synthetic_charts` writes it). The result is the band of the image
around the named bars' ends (tops of vertical bars, right ends of horizontal ones), stretched
to the size of the image, so a few pixels of difference become a large part of it. Bars
keep their left-to-right (top-to-bottom) order; any other bar inside the band stays in it.
"""

from __future__ import annotations

from typing import Annotated, Any

from PIL import Image

from vlrl.builtin.tools.regions import labeled_rects
from vlrl.tool import Metadata, ToolError, tool

MIN_PAD = 8  # pixels around the ends: the band is never thinner than 2 x this
SIDE_PAD = 4  # pixels beside the outermost named bars


@tool
def compare_bars(image: Image.Image, bars_to_compare: list[str],
                 all_bars_bounding_boxes: Annotated[Any, Metadata("bars_bbox")]) -> Image.Image:
    """Zoom into the ends of the given bars, enlarged to the image's size, to tell which is longer when they look
    alike. Returns the edited image.

    Args:
        image: the image to edit (image_1, image_2, ...).
        bars_to_compare: the bars' category labels, each exactly as written in the image.
    """
    bars = [(label.strip(), rect) for label, rect in labeled_rects(all_bars_bounding_boxes, image.size)
            if rect is not None]
    wanted = {str(label).strip() for label in bars_to_compare}
    known = {label for label, _ in bars}
    if not wanted:
        raise ToolError(f"compare_bars: name at least one bar; the image has {sorted(known)}")
    unknown = sorted(wanted - known)
    if unknown:
        raise ToolError(f"compare_bars: unknown bar(s) {unknown}; the image has {sorted(known)}")
    named = [rect for label, rect in bars if label in wanted]
    # vertical bars stand on one baseline (one bottom), horizontal bars start from one left edge
    vertical = len({r[3] for _, r in bars}) <= len({r[0] for _, r in bars})
    across = 0 if vertical else 1  # the axis the bars are side by side on
    ends = [r[1] if vertical else r[2] for r in named]
    pad = max(MIN_PAD, max(ends) - min(ends))
    limit = image.size[1 - across] - 1
    band = (max(min(ends) - pad, 0), min(max(ends) + pad, limit))
    side = (max(min(r[across] for r in named) - SIDE_PAD, 0),
            min(max(r[across + 2] for r in named) + SIDE_PAD, image.size[across] - 1))
    box = (side[0], band[0], side[1], band[1]) if vertical else (band[0], side[0], band[1], side[1])
    return image.crop((box[0], box[1], box[2] + 1, box[3] + 1)).resize(image.size, Image.BICUBIC)
