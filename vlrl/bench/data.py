"""`vlrl bench data`: how fast synthetic samples are made and dataset rows are read.

Generation must never be what training waits on: a CPU training step with groups of 8
takes seconds, so a few dozen charts a second per core is plenty. Figures are for one
process; `vlrl data synth --workers N` scales with cores.
"""

from __future__ import annotations

import json
import tempfile
import time
from itertools import islice

from vlrl.config import TaskConfig
from vlrl.data.synth import SYNTHETIC, synthesize
from vlrl.task import open_task


def _rate(task: str, n: int) -> float:
    """Samples of ``task`` made per second, after one made outside the timing (fonts, matplotlib caches)."""
    stream = iter(open_task(TaskConfig(task))[0])
    next(stream)
    start = time.perf_counter()
    made = sum(1 for _ in islice(stream, n))
    return made / (time.perf_counter() - start)


def _rows_per_s(path: str) -> float:
    start = time.perf_counter()
    rows = sum(1 for _ in open_task(TaskConfig("refocus", {"path": path}))[0])
    return rows / (time.perf_counter() - start)


def measure(charts: int = 40, tables: int = 200, rows: int = 1000) -> dict[str, float]:
    figures = {"charts_per_s": _rate(SYNTHETIC["chart"], charts), "tables_per_s": _rate(SYNTHETIC["table"], tables)}
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(TaskConfig(SYNTHETIC["table"]), 0, rows, tmp)
        # the first pass includes datasets' conversion of the parquet to its cache
        figures["loader_first_pass_rows_per_s"] = _rows_per_s(tmp)
        figures["loader_rows_per_s"] = _rows_per_s(tmp)
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
