"""Charts and tables in one stream: the embedded default's two kinds of image, taken in turn."""

from __future__ import annotations

from typing import Any, Iterator

from vlrl.builtin.tasks.charts import synthetic_charts
from vlrl.builtin.tasks.tables import synthetic_tables
from vlrl.task import task
from vlrl.types import Sample


@task("synthetic_charts_and_tables", reward="chartqa_relaxed")
def synthetic_charts_and_tables(seed: int = 0, charts: dict[str, Any] | None = None,
                                tables: dict[str, Any] | None = None) -> Iterator[Sample]:
    """Chart, table, chart, table, ...: ``synthetic_charts(**charts)`` and
    ``synthetic_tables(**tables)`` with the same seed, alternating, so every batch of an even
    size holds as many of each. Both are opened (and their arguments checked) at once."""
    chart_stream = synthetic_charts(seed=seed, **(charts or {}))
    table_stream = synthetic_tables(seed=seed, **(tables or {}))
    return _alternate(chart_stream, table_stream)


def _alternate(first: Iterator[Sample], second: Iterator[Sample]) -> Iterator[Sample]:
    for pair in zip(first, second):
        yield from pair
