"""The twelve ReFOCUS / VTool-R1 focus tools: focus_on_{columns,rows,x_values,y_values}_with_{mask,draw,highlight}.

The model names labels (column names, row starters, axis labels); the boxes come from the
sample's metadata (``columns_bbox``, ``rows_bbox``, ``x_values_bbox``, ``y_values_bbox``).
- mask: every other labelled region is painted white (a table's header row never is);
  if that would leave nothing, the image is returned unchanged.
- draw: each named region is outlined in red.
- highlight: each named region is tinted with translucent red.
Boxes are inset by 2 px so neighbouring regions and grid lines survive.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Sequence

from PIL import Image

from vlrl.builtin.tools.regions import TARGETS, fill, labeled_rects, outline, pixels, tint
from vlrl.tool import Metadata, ToolError, ToolSpec, tool

INSET = 2
DRAW_WIDTH = 3
HIGHLIGHT_ALPHA = 0.3

PURPOSE = {
    "mask": "Hide everything but the given {what}: every other one is painted white{header}.",
    "draw": "Draw a red box around each of the given {what}.",
    "highlight": "Tint each of the given {what} with translucent red.",
}


def focus(image: Image.Image, labels: Sequence[Any], boxes: Any, op: str, keep_first: bool) -> Image.Image:
    """Apply ``op`` to the labelled regions of ``boxes`` that ``labels`` name (or, for mask, do not)."""
    regions = labeled_rects(boxes, image.size, inset=INSET)
    wanted = {str(label).strip() for label in labels}
    known = {label.strip() for label, _ in regions}
    unknown = sorted(wanted - known)
    if unknown:
        raise ToolError(f"unknown label(s) {unknown}; the image has {sorted(known)[:30]}")
    arr = pixels(image)
    if op == "mask":
        candidates = regions[1:] if keep_first else regions
        hidden = [rect for label, rect in candidates if label.strip() not in wanted]
        if len(hidden) == len(candidates):  # nothing would stay visible
            return image.copy()
        for rect in hidden:
            if rect is not None:
                fill(arr, rect, (255, 255, 255))
    else:
        for label, rect in regions:
            if rect is None or label.strip() not in wanted:
                continue
            if op == "draw":
                outline(arr, rect, (255, 0, 0), DRAW_WIDTH)
            else:
                tint(arr, rect, alpha=HIGHLIGHT_ALPHA)
    return Image.fromarray(arr)


def _make(target: str, op: str) -> ToolSpec:
    key, what, keep_first = TARGETS[target]
    focus_param, boxes_param = f"{target}_to_focus_on", f"all_{target}_bounding_boxes"
    params = [
        inspect.Parameter("image", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Image.Image),
        inspect.Parameter(focus_param, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=list[str]),
        inspect.Parameter(boxes_param, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=Annotated[Any, Metadata(key)]),
    ]
    signature = inspect.Signature(params, return_annotation=Image.Image)

    def run(*args: Any, **kwargs: Any) -> Image.Image:
        bound = signature.bind(*args, **kwargs).arguments
        return focus(bound["image"], bound[focus_param], bound[boxes_param], op, keep_first)

    header = " (the header row stays)" if keep_first else ""
    run.__name__ = run.__qualname__ = f"focus_on_{target}_with_{op}"
    run.__signature__ = signature  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": Image.Image}
    run.__doc__ = (
        PURPOSE[op].format(what=what, header=header) + " Returns the edited image.\n\n"
        f"Args:\n    image: the image to edit (image_1, image_2, ...).\n"
        f"    {focus_param}: the {what} to focus on, each exactly as written in the image.\n"
    )
    return tool(run)


_tools: dict[str, ToolSpec] = {}
for _target in TARGETS:
    for _op in PURPOSE:
        _spec = _make(_target, _op)
        _tools[_spec.name] = _spec
del _target, _op, _spec
globals().update(_tools)  # focus_on_columns_with_mask, ... importable by name
__all__ = sorted(_tools)
