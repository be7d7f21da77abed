"""`vlrl data synth / show` and `vlrl bench data`: datasets written, read back, re-derived, drawn."""

from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pytest
from PIL import Image

from solver import solve
from test_cli import vlrl
from vlrl.builtin.tasks.loaders import refocus


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    for name, seed, workers in (("a", 3, "1"), ("b", 3, "2"), ("c", 4, "1")):
        vlrl("data", "synth", "--kind", "chart", "--n", "6", "--seed", str(seed), "--workers", workers,
             "--out", str(tmp_path / name))
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a["data.parquet"] != c["data.parquet"] and not set(a.values()) & set(c.values())


def _re_derive(samples) -> int:
    for s in samples:
        m = s.metadata
        if m["type"] == "table":
            header, *rows = m["cells"]
            column = header.index(m["column_asked"])
            categories, values = [r[0] for r in rows], [Decimal(r[column]) for r in rows]
        else:
            categories = m["table"]["categories"]
            values = [Decimal(v) for v in m["table"]["series"][m["series_asked"]]]
        assert solve(s.question, categories, values) == s.answers[0], (s.id, s.question)
    return len(samples)


def test_a_thousand_tables_written_and_read_back_have_right_answers(tmp_path):
    vlrl("data", "synth", "--kind", "table", "--n", "1000", "--seed", "11", "--out", str(tmp_path))
    assert _re_derive(list(refocus(path=str(tmp_path)))) == 1000


@pytest.mark.slow
def test_a_thousand_charts_written_and_read_back_have_right_answers(tmp_path):
    vlrl("data", "synth", "--kind", "chart", "--n", "1000", "--seed", "12", "--workers", "2", "--out", str(tmp_path))
    samples = list(refocus(path=str(tmp_path)))
    assert {s.metadata["type"] for s in samples} == {"v_bar", "h_bar", "grouped", "line", "pie"}
    assert _re_derive(samples) == 1000


def test_families_and_bad_arguments(tmp_path):
    vlrl("data", "synth", "--kind", "table", "--n", "12", "--families", "sum", "counting", "--out", str(tmp_path))
    families = {s.metadata["family"] for s in refocus(path=str(tmp_path))}
    assert families == {"sum", "counting"}
    bad = vlrl("data", "synth", "--kind", "table", "--n", "2", "--families", "sums", "--out", str(tmp_path),
               check=False)
    assert bad.returncode == 2 and "unknown question families ['sums']" in bad.stderr


def test_show_draws_the_boxes_and_the_text(tmp_path):
    vlrl("data", "synth", "--kind", "table", "--n", "4", "--out", str(tmp_path / "ds"))
    out = vlrl("data", "show", str(tmp_path / "ds"), "--n", "4", "--out", str(tmp_path / "sheet.png")).stdout
    assert "4 samples" in out
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB")).astype(int)
    assert sheet.shape[0] > 600 and sheet.shape[1] > 800  # a 2 x 2 grid of tiles
    blue = (np.abs(sheet - [0x37, 0x7E, 0xB8]).max(axis=2) < 10).sum()  # the columns' outline colour
    green = (np.abs(sheet - [0x4D, 0xAF, 0x4A]).max(axis=2) < 10).sum()  # the rows' outline colour
    assert blue > 400 and green > 400
    dark = (sheet.max(axis=2) < 60).sum()
    assert dark > 2000  # the captions' text
    bad = vlrl("data", "show", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png"), check=False)
    assert bad.returncode == 2 and "unknown task" in bad.stderr


def test_bench_data_json():
    out = vlrl("bench", "data", "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert set(figures) == {"charts_per_s", "tables_per_s", "loader_rows_per_s"}
    assert all(v > 0 for v in figures.values())

