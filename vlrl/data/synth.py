"""`vlrl data synth`: a task's samples --> a dataset folder that the ``refocus`` loader reads back.

The folder holds ``images/<id>.png`` and ``data.parquet`` in the ReFOCUS / VTool-R1 schema
(``figure_id``, ``query``, ``answer`` with ``|||`` between a list answer's items, ``images`` as
paths relative to the folder, ``metadata`` JSON with the boxes, the family, the difficulty
and the data table). The synthetic tasks make sample k from (seed, k) alone and render
ahead in ``workers`` processes, so the same seed writes the same bytes whatever the worker
count.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from vlrl.config import TaskConfig
from vlrl.task import open_task
from vlrl.types import Sample

SYNTHETIC = {"chart": "synthetic_charts", "table": "synthetic_tables"}  # `--kind` -> the task that draws it
INDEX = "data.parquet"
FEATURES = datasets.Features({
    "figure_id": datasets.Value("string"),
    "query": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "images": datasets.List(datasets.Image()),
    "metadata": datasets.Value("string"),
})


def synthesize(task: TaskConfig, seed: int, n: int, out: str | Path) -> Path:
    """Write the first ``n`` samples of ``task`` under ``seed`` to ``out``; returns the index file."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    samples = iter(open_task(task, seed)[0])
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    try:
        rows = [_write_one(sample, out) for sample in islice(samples, n)]
    finally:
        getattr(samples, "close", lambda: None)()  # a stream that renders in worker processes stops them
    if len(rows) < n:
        raise ValueError(f"task {task.name!r} gave {len(rows)} samples, not {n}")
    index = out / INDEX
    # the schema carries the HF features, so `datasets` reads `images` as images
    pq.write_table(pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema), index)
    return index


def _write_one(sample: Sample, out: Path) -> dict[str, Any]:
    if len(sample.answers) != 1:  # the format holds one answer (perhaps a list), no alternatives
        raise ValueError(f"sample {sample.id!r} has {len(sample.answers)} accepted answers; the ReFOCUS / VTool-R1 "
                         "format holds one")
    name = f"images/{sample.id}.png"
    sample.images[0].save(out / name, format="PNG")
    return {"figure_id": sample.id, "query": sample.question, "answer": "|||".join(sample.answers[0].split("||")),
            "images": [{"path": name, "bytes": None}], "metadata": json.dumps(sample.metadata)}
