"""Real chart and table QA datasets in their published formats, as tasks.

- ``chartqa``: ChartQA as on the hub (``HuggingFaceM4/ChartQA``: ``image``, ``query``,
  ``label`` list, ``human_or_machine``) or as in its release (``imgname``, ``query``,
  ``label``, ``type``; images in ``png/`` beside the index or in ``image_dir``).
- ``refocus``: ReFOCUS / VTool-R1 rows, either the parquet form VTool-R1's preprocessing
  writes (``figure_id``, ``query``, ``answer`` with ``|||`` between the items of a list
  answer, every one expected; ``images``; ``metadata`` with the boxes as ``{label: box}``:
  a JSON string for tables, whose row boxes are under ``row_starters`` and are scaled to
  pixels, or for charts a struct holding every label of the file, ``None`` where a chart
  lacks it, and ``{"x1": "none"}`` for an empty axis) or the ReFOCUS JSON-lines form (``id``,
  ``question``, ``answer``, ``image`` path, ``x_values`` / ``y_values`` / ``column_headers`` /
  ``row_starters`` with box lists aligned to them). ``vlrl data synth`` writes the parquet form.
  ``tool_binding="vtool"`` also gives a bar chart's value boxes as ``columns_bbox`` and
  ``rows_bbox`` (the x values of a vertical one, the y values of a horizontal one), as
  VTool-R1 binds them, so a model trained that way calls the column and row tools on charts.
- ``tablevqa``: TableVQA-Bench (``qa_id``, ``question``, ``gt``, ``image``) and rendered
  WikiTableQuestions rows (``answer_list``, ``figure_path``, table boxes normalised or in
  pixels). Multi-item answers become one ``||``-joined answer for ``multi_answer``.
Every box comes out as vlrl's labelled list ``[{label, x1, y1, x2, y2}]`` in pixels (it
keeps duplicate labels), checked against the image: an inverted box or one wholly
outside the image is a bad row; one that runs past the edge is clamped and counted, and
so is a field read as normalised (every coordinate in [0, 1]) rather than in pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from vlrl.builtin.tools.regions import box_coords, is_relative, to_rect
from vlrl.data.rows import Loaded, load_image, open_rows
from vlrl.task import DataError, OnError, task
from vlrl.tool import ToolError
from vlrl.types import Sample

# metadata key of the boxes -> key of the labels they are aligned with (ReFOCUS' list form)
BOX_KEYS = {"x_values_bbox": "x_values", "y_values_bbox": "y_values", "columns_bbox": "column_headers",
            "rows_bbox": "row_starters"}
SOURCE_TYPES = {"chartqa_v_bar": "v_bar", "chartqa_h_bar": "h_bar"}
EMPTY_AXIS = "none"  # VTool-R1's chart files write {"x1": "none"} for an axis without boxes
VALUE_BOXES = {"v_bar": "x_values_bbox", "h_bar": "y_values_bbox"}  # the boxes of a bar chart's values
ToolBinding = Literal["vlrl", "vtool"]


def _loaded(convert: Any, path: str, split: str, streaming: bool, num_shards: int, shard_index: int, seed: int,
            shuffle: bool, on_error: OnError, limit: int) -> Loaded:
    source = open_rows(path, split, streaming, num_shards, shard_index, seed if shuffle else None)
    return Loaded(source, convert, on_error=on_error, limit=limit)


@task("chartqa", reward="chartqa_relaxed")
def chartqa(seed: int = 0, path: str = "HuggingFaceM4/ChartQA", split: str = "test", image_dir: str = "",
            streaming: bool = False, num_shards: int = 1, shard_index: int = 0, shuffle: bool = False,
            on_error: OnError = "fail", limit: int = 0) -> Loaded:
    """ChartQA questions (no boxes: the drawing tools apply, the focus tools do not)."""

    def convert(row: dict[str, Any], loaded: Loaded, position: int) -> Sample:
        if row.get("image") is not None:
            image = load_image(row["image"], loaded.source.base)
        else:
            name = _text(row, "imgname")
            folder = Path(image_dir) if image_dir else loaded.source.base / "png"
            image = load_image(str(folder / name), loaded.source.base)
        answers = _answers(row.get("label"), "label")
        origin = row.get("type") or {0: "human", 1: "augmented"}.get(row.get("human_or_machine"), "")
        sample_id = str(row.get("imgname") or f"chartqa-{split}-{position}")
        return Sample(sample_id, (image,), _text(row, "query"), answers, {"source": origin} if origin else {},
                      "chartqa")

    return _loaded(convert, path, split, streaming, num_shards, shard_index, seed, shuffle, on_error, limit)


@task("refocus", reward="chartqa_relaxed_list")
def refocus(seed: int = 0, path: str = "", split: str = "test", streaming: bool = False, num_shards: int = 1,
            shard_index: int = 0, shuffle: bool = False, on_error: OnError = "fail", limit: int = 0,
            tool_binding: ToolBinding = "vlrl") -> Loaded:
    """ReFOCUS / VTool-R1 chart and table questions with the boxes the focus tools use."""
    if not path:
        raise ValueError("refocus needs a path: a ReFOCUS / VTool-R1 parquet or JSON-lines file, or its folder")
    if tool_binding not in ("vlrl", "vtool"):
        raise ValueError(f"refocus tool_binding must be 'vlrl' or 'vtool', got {tool_binding!r}")

    def convert(row: dict[str, Any], loaded: Loaded, position: int) -> Sample:
        meta = row.get("metadata")
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError as e:
                raise DataError(f"metadata is not JSON ({e})", problem="metadata not JSON") from None
        meta = dict(meta or row)
        images = row.get("images")
        if images is not None:
            if not isinstance(images, Sequence) or isinstance(images, (str, bytes)) or not images:
                raise DataError(f"images must be a non-empty list, got {type(images).__name__}",
                                problem="missing image")
            pictures = tuple(load_image(v, loaded.source.base) for v in images)
        else:
            pictures = (load_image(_text(row, "image"), loaded.source.base),)
        question = _text(row, "query" if "query" in row else "question")
        answer = row.get("answer")
        if isinstance(answer, str):  # VTool-R1: list items joined by |||, one answer
            answers = ("||".join(_answers(answer, "answer", "|||")),)
        else:
            answers = _answers(answer, "answer")
        if isinstance(meta.get("row_starters"), Mapping):  # VTool-R1's tables: the row boxes keyed by starter
            meta["rows_bbox"] = meta.pop("row_starters")
        metadata = {k: v for k, v in meta.items() if k not in BOX_KEYS and k not in BOX_KEYS.values()}
        metadata |= _boxes(meta, pictures[0].size, loaded)
        kind = metadata.get("type") or meta.get("source")
        if kind in SOURCE_TYPES:
            metadata["type"] = SOURCE_TYPES[kind]
        values = VALUE_BOXES.get(metadata.get("type", ""))
        if tool_binding == "vtool" and values in metadata:
            metadata["columns_bbox"] = metadata["rows_bbox"] = metadata[values]
        for key in ("question", "query", "answer", "image", "images", "metadata", "id", "figure_id"):
            metadata.pop(key, None)
        sample_id = str(row.get("figure_id") or row.get("id") or f"refocus-{split}-{position}")
        return Sample(sample_id, pictures, question, answers, metadata, "refocus")

    return _loaded(convert, path, split, streaming, num_shards, shard_index, seed, shuffle, on_error, limit)


@task("tablevqa", reward="multi_answer")
def tablevqa(seed: int = 0, path: str = "terryoo/TableVQA-Bench", split: str = "vwtq", streaming: bool = False,
             num_shards: int = 1, shard_index: int = 0, shuffle: bool = False, on_error: OnError = "fail",
             limit: int = 0) -> Loaded:
    """TableVQA-Bench questions over table images (with column and row boxes when the rows carry them)."""

    def convert(row: dict[str, Any], loaded: Loaded, position: int) -> Sample:
        picture = row.get("image") if row.get("image") is not None else _text(row, "figure_path")
        image = load_image(picture, loaded.source.base)
        items = row.get("answer_list")
        if isinstance(items, Sequence) and not isinstance(items, str) and len(items) > 1:
            answers = ("||".join(str(i).strip() for i in items),)
        else:
            answers = _answers(row.get("gt") if row.get("gt") is not None else row.get("answer"), "gt")
        boxes = {key: row.get(f"{key}_px") or row.get(key) for key in ("columns_bbox", "rows_bbox")}
        labels = {key: row.get(key) for key in ("column_headers", "row_starters")}
        metadata = {"type": "table", **_boxes({**boxes, **labels}, image.size, loaded)}
        if row.get("text_html_table"):
            metadata["html"] = row["text_html_table"]
        sample_id = str(row.get("qa_id") or f"tablevqa-{split}-{position}")
        return Sample(sample_id, (image,), _text(row, "question"), answers, metadata, "tablevqa")

    return _loaded(convert, path, split, streaming, num_shards, shard_index, seed, shuffle, on_error, limit)


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        raise DataError(f"missing field {key!r} (fields: {sorted(row)[:12]})", problem=f"missing field {key}")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"field {key!r} is empty or not text: {value!r}", problem=f"empty {key}")
    return value


def _answers(value: Any, key: str, separator: str = "") -> tuple[str, ...]:
    """Accepted answers from a string (split on ``separator``) or a list; an empty one is a bad row."""
    if value is None:
        raise DataError(f"missing field {key!r}", problem="missing answer")
    if isinstance(value, str):
        items = value.split(separator) if separator else [value]
    elif isinstance(value, Sequence):
        items = [str(v) for v in value]
    else:
        items = [str(value)]
    answers = tuple(a.strip() for a in items)
    if not answers or not all(answers):
        raise DataError(f"empty answer in {value!r}", problem="empty answer")
    return answers


def _boxes(meta: Mapping[str, Any], size: tuple[int, int], loaded: Loaded) -> dict[str, list[dict[str, Any]]]:
    """Every box field of ``meta`` as labelled pixel boxes, checked against an image of ``size``.

    Coordinates are read, judged normalised or not (once per field) and clamped exactly as
    the focus tools do (``tools.regions``), so what is checked here is what the tools use.
    """
    out = {}
    for key, labels_key in BOX_KEYS.items():
        value = meta.get(key)
        if not value:
            continue
        if not isinstance(value, (Mapping, list, tuple)):
            raise DataError(f"{key} must be a list of boxes or a map from label to box, got {type(value).__name__} "
                            f"{value!r:.80}", problem="malformed box")
        if isinstance(value, Mapping):  # VTool-R1: {label: box}, None for a label of another chart of the file
            pairs = [(label, box) for label, box in value.items() if box is not None and box != EMPTY_AXIS]
            if not pairs:
                continue
            # a struct's labels come in the file's order, not the chart's: put them back as they are drawn
            across = "x1" if key in ("x_values_bbox", "columns_bbox") else "y1"
            pairs.sort(key=lambda pair: _position(pair[1], across))
        elif all(isinstance(b, Mapping) and "label" in b for b in value):  # vlrl: [{label, x1, ...}]
            pairs = [(b["label"], b) for b in value]
        else:  # ReFOCUS: boxes aligned with a label list
            labels = meta.get(labels_key) or []
            if not isinstance(labels, (list, tuple)):
                raise DataError(f"{labels_key} must be a list of labels, got {type(labels).__name__} {labels!r:.80}",
                                problem="malformed labels")
            if len(labels) != len(value):
                raise DataError(f"{key} has {len(value)} boxes for {len(labels)} {labels_key}",
                                problem="boxes not aligned with labels")
            pairs = list(zip(labels, value))
        try:
            coords = [box_coords(box) for _, box in pairs]
        except ToolError as e:
            raise DataError(f"{key}: {e}", problem="malformed box") from None
        relative = all(is_relative(c) for c in coords)
        if relative:
            loaded.notes[f"{key} normalised"] += 1
        out[key] = [_pixel_box(str(label), c, size, key, relative, loaded) for (label, _), c in zip(pairs, coords)]
    return out


def _position(box: Any, coordinate: str) -> float:
    """Where a box lies along an axis, for ordering; a malformed box sorts first and is named when read."""
    try:
        return float(box[coordinate])
    except (KeyError, TypeError, ValueError, IndexError):
        return float("-inf")


def _pixel_box(label: str, coords: list[float], size: tuple[int, int], key: str, relative: bool,
               loaded: Loaded) -> dict[str, Any]:
    x1, y1, x2, y2 = coords
    if x2 < x1 or y2 < y1:
        raise DataError(f"{key} box for {label!r} is inverted: {coords}", problem="inverted box")
    rect = to_rect(coords, size, relative)
    if rect is None:
        raise DataError(f"{key} box for {label!r} lies outside the {size[0]}x{size[1]} image: {coords}",
                        problem="box outside the image")
    scale = (size[0], size[1], size[0], size[1]) if relative else (1, 1, 1, 1)
    if rect != tuple(int(round(c * k)) for c, k in zip(coords, scale)):
        loaded.notes["boxes clamped to the image"] += 1
    return {"label": label, "x1": rect[0], "y1": rect[1], "x2": rect[2], "y2": rect[3]}
