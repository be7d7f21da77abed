"""Synthetic tables: every glyph inside its cell, answers re-derived from the cells, seeds reproducible."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from itertools import islice

import numpy as np
import pytest

from solver import solve
from vlrl.builtin.tasks.tables import DATA_BAR, Frame, TableStyle, render_table, synthetic_tables
from vlrl.config import TaskConfig
from vlrl.task import open_task


@pytest.fixture(scope="module")
def tables():
    return list(islice(synthetic_tables(seed=5), 150))


def test_every_glyph_lies_in_a_cell_and_every_cell_holds_its_text(tables):
    for s in tables:
        m = s.metadata
        gray = np.asarray(s.images[0].convert("L")).astype(int)
        ink = gray < 80  # text; grid lines are mid-grey, fills light
        covered = np.zeros_like(ink)
        for r, row in enumerate(m["cells_bbox"]):
            for c, (x1, y1, x2, y2) in enumerate(row):
                # the glyphs stay off the grid lines on the box's edges
                inside = ink[y1 + 1 : y2, x1 + 1 : x2]
                assert inside.any(), (s.id, r, c, m["cells"][r][c])
                covered[y1 + 1 : y2, x1 + 1 : x2] = True
        assert not (ink & ~covered).any(), s.id
        for c, column in enumerate(m["columns_bbox"]):
            assert column["label"] == m["cells"][0][c] == m["column_headers"][c]
            for x1, y1, x2, y2 in (row[c] for row in m["cells_bbox"]):
                assert column["x1"] <= x1 and x2 <= column["x2"] and column["y1"] <= y1 and y2 <= column["y2"]
        for r, row_box in enumerate(m["rows_bbox"]):
            assert row_box["label"] == m["cells"][r][0] == m["row_starters"][r]
            assert (row_box["y1"], row_box["y2"]) == (m["cells_bbox"][r][0][1], m["cells_bbox"][r][0][3])
        # neighbouring rows and columns share an edge and never overlap
        assert all(a["y2"] == b["y1"] for a, b in zip(m["rows_bbox"], m["rows_bbox"][1:]))
        assert all(a["x2"] == b["x1"] for a, b in zip(m["columns_bbox"], m["columns_bbox"][1:]))


def test_answers_are_re_derived_from_the_cells(tables):
    for s in tables:
        header, *rows = s.metadata["cells"]
        column = header.index(s.metadata["column_asked"])
        values = [Decimal(row[column]) for row in rows]
        assert solve(s.question, [row[0] for row in rows], values) == s.answers[0], (s.id, s.question)


def test_difficulty_adds_rows_and_distractor_columns(tables):
    by_level: dict[str, list] = {}
    for s in tables:
        by_level.setdefault(s.metadata["difficulty"], []).append(s)
    rows = {k: max(len(s.metadata["cells"]) - 1 for s in v) for k, v in by_level.items()}
    columns = {k: min(len(s.metadata["cells"][0]) for s in v) for k, v in by_level.items()}
    assert rows["easy"] <= 4 < rows["medium"] <= 7 < rows["hard"]
    assert columns["easy"] < columns["medium"] < columns["hard"]
    families = Counter(s.metadata["family"] for s in tables)
    assert len(families) == 9


def test_same_seed_same_bytes_other_seed_other_tables():
    a = [(s.images[0].tobytes(), s.question, s.metadata) for s in islice(synthetic_tables(seed=1), 5)]
    b = [(s.images[0].tobytes(), s.question, s.metadata) for s in islice(synthetic_tables(seed=1), 5)]
    c = [(s.images[0].tobytes(), s.question, s.metadata) for s in islice(synthetic_tables(seed=2), 5)]
    assert a == b and a != c


def test_the_task_names_its_reward_and_a_config_can_override_it():
    samples, reward = open_task(TaskConfig(name="synthetic_tables", args={"difficulty": "easy"}), seed=3)
    first = next(iter(samples))
    assert reward == "chartqa_relaxed" and first.metadata["difficulty"] == "easy"
    assert open_task(TaskConfig(name="synthetic_tables", reward="exact_match"))[1] == "exact_match"
    with pytest.raises(LookupError, match="no_such_reward"):
        open_task(TaskConfig(name="synthetic_tables", reward="no_such_reward"))
    with pytest.raises(ValueError, match="does not take the arguments"):
        open_task(TaskConfig(name="synthetic_tables", args={"colour": "red"}))


def test_starter_tables_show_each_number_as_a_data_bar_in_order():
    """The starter rung has only the names and the asked column, with a dark bar beside every
    number as long as its share of the largest: the tallest is visible without reading a
    digit, and no bar covers a digit."""
    bar = tuple(int(DATA_BAR[k : k + 2], 16) for k in (1, 3, 5))
    for s in islice(synthetic_tables(seed=2, difficulty="starter", families=["largest"]), 20):
        m = s.metadata
        header, *rows = m["cells"]
        assert len(header) == 2  # the names and the one number column: nothing else to look at
        c = header.index(m["column_asked"])
        pixels = np.asarray(s.images[0].convert("RGB")).astype(int)
        lengths = []
        for r in range(1, len(m["cells"])):
            x1, y1, x2, y2 = m["cells_bbox"][r][c]
            cell = pixels[y1 + 1 : y2, x1 + 1 : x2]
            on_bar = (np.abs(cell - bar).sum(axis=2) < 30).any(axis=0)
            text = (cell.sum(axis=2) < 3 * 80).any(axis=0)  # the digits' dark columns
            assert text.any() and not (on_bar & text).any(), (s.id, r)
            lengths.append(int(on_bar.sum()))
        values = [float(row[c]) for row in rows]
        assert lengths.index(max(lengths)) == values.index(max(values)) == [row[0] for row in rows].index(s.answers[0])
        assert sorted(range(len(values)), key=values.__getitem__) == sorted(range(len(lengths)),
                                                                              key=lengths.__getitem__)


def test_starter_tables_put_every_row_on_the_same_pixels():
    """Whatever the font, names and numbers, a starter table is the same square with row k and
    column c at the same place (a model trained from scratch reads a row by where it is);
    other rungs size their cells to the text."""
    starter = list(islice(synthetic_tables(seed=3, difficulty="starter", families=["largest"]), 30))
    assert {s.images[0].size for s in starter} == {(280, 280)}
    rows = {len(s.metadata["cells"]) for s in starter}
    assert rows == {4, 5}  # 3 and 4 names under the header
    reference = max(starter, key=lambda s: len(s.metadata["cells"])).metadata
    for s in starter:
        m = s.metadata
        assert m["cells_bbox"] == reference["cells_bbox"][: len(m["cells"])], s.id
        assert len({m["cells_bbox"][r][0][3] - m["cells_bbox"][r][0][1] for r in range(len(m["cells"]))}) == 1
    assert len({s.images[0].size for s in islice(synthetic_tables(seed=3, difficulty="easy"), 10)}) > 1


def test_a_frame_refuses_rows_and_text_it_cannot_hold():
    cells = [["Name", "Sales"], ["A", "12"], ["B", "30"]]
    style = TableStyle("DejaVu Sans", 14, (8, 5), "#e6e6e6", "#ffffff", True, 12)
    with pytest.raises(ValueError, match="2 row slots cannot hold 3 rows"):
        render_table(cells, style, [False, True], frame=Frame(slots=2))
    with pytest.raises(ValueError, match="column 0 needs"):
        render_table([["A much longer first header", "Sales"], *cells[1:]], style, [False, True], frame=Frame())
    with pytest.raises(ValueError, match="does not fit the frame's rows of 16 px"):
        render_table(cells, style, [False, True], frame=Frame(size=108, slots=5))


def test_charts_and_tables_alternate_in_one_stream():
    args = {"charts": {"kinds": ["v_bar"], "difficulty": "starter", "labels": "letters"},
            "tables": {"difficulty": "starter"}}
    samples, reward = open_task(TaskConfig("synthetic_charts_and_tables", args), seed=4)
    mixed = list(islice(samples, 6))
    assert reward == "chartqa_relaxed"
    assert [s.task for s in mixed] == ["synthetic_charts", "synthetic_tables"] * 3
    alone = list(islice(open_task(TaskConfig("synthetic_tables", args["tables"]), seed=4)[0], 3))
    assert [s.id for s in mixed[1::2]] == [s.id for s in alone] and mixed[1].question == alone[0].question
    with pytest.raises(ValueError, match="unknown difficulty"):
        open_task(TaskConfig("synthetic_charts_and_tables", {"tables": {"difficulty": "expert"}}))


def test_letter_labels_name_the_rows_from_the_top():
    for s in islice(synthetic_tables(seed=6, difficulty="starter", families=["largest"], labels="letters"), 10):
        starters = [row[0] for row in s.metadata["cells"][1:]]
        assert starters == list("ABCD"[: len(starters)]) and s.answers[0] in starters
    with pytest.raises(ValueError, match="labels must be"):
        synthetic_tables(labels="numbers")
