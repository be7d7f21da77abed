"""A tool for bars too close to tell apart at a glance: ``compare_bars`` enlarges their ends.

The model names bars by their category label; the boxes come from the sample's ``bars_bbox``
(each bar's pixel box, as `synthetic_charts` writes it). The result is the band of the image
around the named bars' ends (tops of vertical bars, right ends of horizontal ones), stretched
across to the size of the image, so a few pixels of difference become a large part of it.
Along the other axis nothing moves: every bar keeps its place (a bar's label is where it
was in the chart), and a bar that ends short of the band leaves its place empty.
"""

from __future__ import annotations

from typing import Annotated, Any

from PIL import Image

from vlrl.builtin.tools.regions import labeled_rects
from vlrl.tool import Metadata, ToolError, tool

MIN_PAD = 8  # pixels around the ends: the band is never thinner than 2 x this


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
    # vertical bars stand on one baseline (one bottom), horizontal bars start from one left edge
    vertical = len({r[3] for _, r in bars}) <= len({r[0] for _, r in bars})
    ends = [r[1] if vertical else r[2] for label, r in bars if label in wanted]
    pad = max(MIN_PAD, max(ends) - min(ends))
    width, height = image.size
    if vertical:
        low, high = max(min(ends) - pad, 0), min(max(ends) + pad, height - 1)
        return image.crop((0, low, width, high + 1)).resize(image.size, Image.BICUBIC)
    low, high = max(min(ends) - pad, 0), min(max(ends) + pad, width - 1)
    return image.crop((low, 0, high + 1, height)).resize(image.size, Image.BICUBIC)
