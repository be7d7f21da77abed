"""`vlrl data synth`: write a synthetic chart or table dataset that the ``refocus`` loader reads back.

The folder holds ``images/<id>.png`` and ``data.parquet`` in the ReFOCUS / VTool-R1 schema
(``figure_id``, ``query``, ``answer`` with ``|||`` between accepted answers, ``images`` as
paths relative to the folder, ``metadata`` JSON with the boxes, the family, the difficulty
and the data table). Sample k depends only on (seed, k), so workers split the indices and
the same seed writes the same bytes whatever the worker count.
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.charts import chart_at
from tasks.questions import BUILDERS, FAMILIES
from tasks.tables import table_at

SynthKind = Literal["chart", "table"]
INDEX = "data.parquet"
FEATURES = datasets.Features({
    "figure_id": datasets.Value("string"),
    "query": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "images": datasets.List(datasets.Image()),
    "metadata": datasets.Value("string"),
})


@dataclass(frozen=True)
class SynthSpec:
    kind: SynthKind
    seed: int = 0
    families: tuple[str, ...] = FAMILIES
    difficulty: str | None = None


def synthesize(spec: SynthSpec, n: int, out: str | Path, workers: int = 1) -> Path:
    """Write ``n`` samples of ``spec`` to ``out``; returns the index file."""
    if spec.kind not in ("chart", "table"):
        raise ValueError(f"kind must be 'chart' or 'table', got {spec.kind!r}")
    if n < 1 or workers < 1:
        raise ValueError(f"n and workers must be >= 1, got n={n}, workers={workers}")
    unknown = sorted(set(spec.families) - set(BUILDERS))
    if unknown or not spec.families:
        raise ValueError(f"unknown question families {unknown or []}; families: {list(BUILDERS)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    make = partial(_write_one, spec, out)
    if workers == 1:
        rows = [make(k) for k in range(n)]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = pool.map(make, range(n), chunksize=max(1, n // (workers * 8)))
    index = out / INDEX
    # the schema carries the HF features, so `datasets` reads `images` as images
    pq.write_table(pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema), index)
    return index


def _write_one(spec: SynthSpec, out: Path, index: int) -> dict[str, Any]:
    if spec.kind == "chart":
        sample = chart_at(spec.seed, index, families=spec.families, difficulty=spec.difficulty)
    else:
        sample = table_at(spec.seed, index, families=spec.families, difficulty=spec.difficulty)
    name = f"images/{sample.id}.png"
    sample.images[0].save(out / name, format="PNG")
    return {"figure_id": sample.id, "query": sample.question, "answer": "|||".join(sample.answers),
            "images": [{"path": name, "bytes": None}], "metadata": json.dumps(sample.metadata)}


def parse_families(text: Sequence[str] | None) -> tuple[str, ...]:
    """``--families`` given as names separated by spaces or commas."""
    if not text:
        return FAMILIES
    return tuple(f for item in text for f in item.split(",") if f)
