"""`vlrl data check`: what a dataset file gives its loader, the command to run before training on a new file.

Every row goes through the loader with ``on_error: skip``: the rows read, the samples they
gave, the rows skipped by reason (with the first row of each), and for each box field how
many samples have it as labelled boxes (the focus tools a sample is offered follow from
these: ``columns_bbox``, ``rows_bbox``, ``x_values_bbox``, ``y_values_bbox``), how many of
those were read as normalised rather than pixel coordinates, and how many boxes were
clamped to their image.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from vlrl.data.rows import open_dataset


def check(path: str, fmt: str = "auto", split: str = "", **args: Any) -> dict[str, Any]:
    """The figures of one pass over the dataset (see the module docstring); ``args`` go to the loader."""
    fmt, loaded = open_dataset(path, fmt, split, on_error="skip", **args)
    boxes: Counter = Counter()
    samples = 0
    for sample in loaded:
        samples += 1
        boxes.update(key for key, value in sample.metadata.items() if key.endswith("_bbox") and isinstance(value, list)
                     and value)
    return {
        "path": path, "format": fmt, "rows": loaded.rows_read, "samples": samples,
        "skipped": dict(loaded.errors.skipped), "first_skipped": dict(loaded.errors.examples),
        "boxes": dict(sorted(boxes.items())),
        "normalised": {key: loaded.notes[f"{key} normalised"] for key in sorted(boxes)},
        "clamped": loaded.notes["boxes clamped to the image"],
    }


def print_report(report: dict[str, Any], as_json: bool) -> None:
    print(f"{report['path']} ({report['format']}): {report['rows']} rows read, {report['samples']} samples")
    for reason, n in sorted(report["skipped"].items(), key=lambda kv: -kv[1]):
        print(f"  skipped {n:>6}  {reason}  (first: {report['first_skipped'][reason]})")
    for key, n in report["boxes"].items():
        read = f", {report['normalised'][key]} of them normalised" if report["normalised"][key] else ""
        print(f"  {key:>14}: {n} samples{read}")
    print(f"  boxes clamped to the image: {report['clamped']}")
    if as_json:
        print(json.dumps({k: report[k] for k in ("rows", "samples", "skipped", "boxes", "normalised", "clamped")}))
