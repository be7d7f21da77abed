"""`vlrl bench data`: how fast synthetic samples are made and dataset rows are read.

Generation must never be what training waits on: a CPU training step with groups of 8
takes seconds, so a few dozen charts a second per core is plenty. Figures are for one
process; `vlrl data synth --workers N` scales with cores.
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import Callable

from tasks.charts import chart_at
from tasks.loaders import refocus
from tasks.tables import table_at
from vlrl.synth import SynthSpec, synthesize


def _rate(make: Callable[[int], object], n: int) -> float:
    make(10_000)  # warm caches (fonts, matplotlib) outside the timing
    start = time.perf_counter()
    for k in range(n):
        make(k)
    return n / (time.perf_counter() - start)


def measure(charts: int = 40, tables: int = 200, rows: int = 1000) -> dict[str, float]:
    figures = {"charts_per_s": _rate(lambda k: chart_at(0, k), charts),
               "tables_per_s": _rate(lambda k: table_at(0, k), tables)}
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthSpec("table", seed=0), rows, tmp)
        start = time.perf_counter()
        first = sum(1 for _ in refocus(path=tmp))  # includes datasets' conversion of the parquet to its cache
        figures["loader_first_pass_rows_per_s"] = first / (time.perf_counter() - start)
        start = time.perf_counter()
        again = sum(1 for _ in refocus(path=tmp))
        figures["loader_rows_per_s"] = again / (time.perf_counter() - start)
    return figures


def run(as_json: bool, charts: int = 40, tables: int = 200, rows: int = 1000) -> dict[str, float]:
    figures = measure(charts, tables, rows)
    print("synthetic data, one process")
    print(f"  charts {figures['charts_per_s']:.1f}/s ({charts} rendered with matplotlib, boxes included)")
    print(f"  tables {figures['tables_per_s']:.1f}/s ({tables} rendered with PIL)")
    print(f"  loader {figures['loader_rows_per_s']:.0f} rows/s from parquet, images decoded and boxes checked "
          f"({figures['loader_first_pass_rows_per_s']:.0f} rows/s on the first pass, which builds the cache)")
    if as_json:
        keys = ("charts_per_s", "tables_per_s", "loader_rows_per_s")
        print(json.dumps({k: round(figures[k], 1) for k in keys}))
    return figures
