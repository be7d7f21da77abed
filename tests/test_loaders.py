"""Loaders: the published formats (written here as fixtures) and the real files in ../shared/realdata."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from vlrl.builtin.tasks.loaders import chartqa, refocus, tablevqa
from vlrl.builtin.tools.focus import focus
from vlrl.config import TaskConfig
from vlrl.task import DataError, open_task


def png(colour: str = "white", size: tuple[int, int] = (120, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(path, rows: dict, features: datasets.Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


@pytest.fixture
def chartqa_hub(tmp_path):
    """ChartQA laid out as on the hub: data/test-*.parquet with an image column and a label list."""
    features = datasets.Features({"image": datasets.Image(), "query": datasets.Value("string"),
                                  "label": datasets.List(datasets.Value("string")),
                                  "human_or_machine": datasets.ClassLabel(names=["human", "machine"])})
    rows = {"image": [{"bytes": png(c), "path": None} for c in ("red", "green", "blue")],
            "query": ["Which bar is red?", "What is the max?", "Is it blue?"],
            "label": [["A"], ["62"], ["Yes"]], "human_or_machine": [0, 1, 0]}
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows, features)
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet",
                  {k: v[:1] for k, v in rows.items()}, features)
    return tmp_path


def test_chartqa_hub_layout_reads_the_split_asked_for(chartqa_hub):
    test = list(chartqa(path=str(chartqa_hub), split="test"))
    train = list(chartqa(path=str(chartqa_hub), split="train"))
    assert [s.question for s in test] == ["Which bar is red?", "What is the max?", "Is it blue?"]
    assert [s.answers for s in test] == [("A",), ("62",), ("Yes",)] and len(train) == 1
    assert [s.metadata["source"] for s in test] == ["human", "augmented", "human"]
    assert test[1].images[0].getpixel((5, 5)) == (0, 128, 0)


def test_refocus_vtool_parquet_reads_a_list_answer_and_dict_boxes(tmp_path):
    features = datasets.Features({"figure_id": datasets.Value("string"), "query": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "images": datasets.List(datasets.Image()),
                                  "metadata": datasets.Value("string")})
    meta = {"type": "v_bar", "x_values_bbox": {"A": {"x1": 10, "y1": 5, "x2": 50, "y2": 75},
                                               "B": {"x1": 60, "y1": 5, "x2": 130, "y2": 75}}}
    write_parquet(tmp_path / "vtool.parquet", {
        "figure_id": ["f1"], "query": ["Which is larger?"], "answer": ["A|||a"],
        "images": [[{"bytes": png(), "path": None}]], "metadata": [json.dumps(meta)]}, features)
    [s] = list(refocus(path=str(tmp_path / "vtool.parquet")))
    assert s.id == "f1" and s.answers == ("A||a",) and s.metadata["type"] == "v_bar"  # ||| joins a list's items
    # B runs past the 120 px edge: clamped, and counted
    assert s.metadata["x_values_bbox"] == [{"label": "A", "x1": 10, "y1": 5, "x2": 50, "y2": 75},
                                           {"label": "B", "x1": 60, "y1": 5, "x2": 119, "y2": 75}]
    loaded = refocus(path=str(tmp_path / "vtool.parquet"))
    list(loaded)
    assert loaded.notes["boxes clamped to the image"] == 1


def test_tablevqa_bench_parquet_and_an_image_folder(tmp_path):
    features = datasets.Features({"qa_id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "gt": datasets.Value("string"), "image": datasets.Image()})
    write_parquet(tmp_path / "tv" / "data" / "vwtq-00000-of-00001.parquet",
                  {"qa_id": ["nu-1"], "question": ["who won?"], "gt": ["Ann"], "image": [{"bytes": png(), "path": None}]},
                  features)
    [s] = list(tablevqa(path=str(tmp_path / "tv")))
    assert (s.id, s.answers, s.metadata["type"]) == ("nu-1", ("Ann",), "table")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(png("red"))
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "query": "colour?", "label": ["red"]}))
    [s] = list(chartqa(path=str(folder)))
    assert s.answers == ("red",) and s.images[0].getpixel((0, 0)) == (255, 0, 0)


BAD_ROWS = [  # (what is wrong, the row's fields, the problem the loader names)
    ("corrupt image", {"image": "bad.png"}, "corrupt image"),
    ("missing field", {"question": None}, "missing field question"),
    ("box outside the image", {"x_values_bbox": [{"x1": 500, "y1": 0, "x2": 600, "y2": 10}]}, "box outside the image"),
    ("empty answer", {"answer": " "}, "empty answer"),
]


@pytest.fixture
def jsonl_with_bad_rows(tmp_path):
    (tmp_path / "good.png").write_bytes(png())
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = {"id": "ok", "question": "Q?", "answer": "1", "image": "good.png", "x_values": ["A"], "y_values": [],
            "x_values_bbox": [{"x1": 1, "y1": 1, "x2": 20, "y2": 20}], "y_values_bbox": []}
    rows = [good | {"id": "ok0"}]
    for k, (_, change, _) in enumerate(BAD_ROWS):
        rows += [good | change | {"id": f"bad{k}"}, good | {"id": f"ok{k + 1}"}]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_bad_rows_fail_with_row_and_problem(jsonl_with_bad_rows):
    loaded = refocus(path=str(jsonl_with_bad_rows))
    with pytest.raises(DataError) as e:
        list(loaded)
    assert "row 1 (id 'bad0')" in str(e.value) and "cannot read image" in str(e.value) and "bad.png" in str(e.value)


@pytest.mark.parametrize("k", range(len(BAD_ROWS)))
def test_each_bad_row_is_named(jsonl_with_bad_rows, k):
    rows = [json.loads(line) for line in jsonl_with_bad_rows.read_text().splitlines()]
    single = jsonl_with_bad_rows.with_name(f"only{k}.jsonl")
    single.write_text(json.dumps(rows[2 * k + 1]))
    with pytest.raises(DataError, match=rf"row 0 \(id 'bad{k}'\)") as e:
        list(refocus(path=str(single)))
    assert e.value.problem == BAD_ROWS[k][2] and str(single) in str(e.value)


def test_skip_counts_every_bad_row_and_keeps_the_rest(jsonl_with_bad_rows):
    loaded = refocus(path=str(jsonl_with_bad_rows), on_error="skip")
    kept = list(loaded)
    assert [s.id for s in kept] == [f"ok{k}" for k in range(len(BAD_ROWS) + 1)]
    assert dict(loaded.errors.skipped) == {problem: 1 for _, _, problem in BAD_ROWS}
    assert loaded.rows_read == len(kept) + loaded.errors.total  # nothing silently dropped


def test_shards_partition_the_rows_and_streaming_reads_the_same(chartqa_hub, tmp_path):
    rows = {"figure_id": [f"f{k}" for k in range(10)], "query": [f"q{k}" for k in range(10)],
            "answer": [str(k) for k in range(10)], "image": ["a.png"] * 10}
    (tmp_path / "a.png").write_bytes(png())
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "rows.parquet"))
    path = str(tmp_path / "rows.parquet")
    whole = [s.id for s in refocus(path=path)]
    shards = [[s.id for s in refocus(path=path, num_shards=3, shard_index=i)] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(whole) and all(shards)
    assert len(set(sum(shards, []))) == len(whole)
    assert [s.id for s in refocus(path=path, streaming=True)] == whole
    streamed = [[s.id for s in refocus(path=path, streaming=True, num_shards=2, shard_index=i)] for i in range(2)]
    assert sorted(sum(streamed, [])) == sorted(whole)
    shuffled = [s.id for s in refocus(path=path, shuffle=True, seed=1)]
    assert sorted(shuffled) == sorted(whole) and shuffled != whole
    assert [s.id for s in refocus(path=path, limit=4)] == whole[:4]


def test_each_loader_names_its_reward(chartqa_hub):
    rewards = {name: open_task(TaskConfig(name, {"path": str(chartqa_hub), "split": "test"}))[1]
               for name in ("chartqa", "refocus", "tablevqa")}
    assert rewards == {"chartqa": "chartqa_relaxed", "refocus": "chartqa_relaxed_list", "tablevqa": "multi_answer"}


def test_a_hub_name_offline_is_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "vlrl.cli", "data", "show", "HuggingFaceM4/ChartQA", "--format",
                             "chartqa", "--out", str(tmp_path / "x.png")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2 and "cannot load 'HuggingFaceM4/ChartQA'" in result.stderr
    assert "pass the local folder or file" in result.stderr


# ------------------------------------------------------------------ real data


def _changed_inside(before: Image.Image, after: Image.Image, box: dict) -> bool:
    a, b = np.asarray(before), np.asarray(after)
    region = (slice(box["y1"], box["y2"] + 1), slice(box["x1"], box["x2"] + 1))
    return (a[region] != b[region]).any()


def test_real_chartqa_bars_with_refocus_boxes(realdata):
    loaded = refocus(path=str(realdata / "chartqa_test_refocus_bbox"), split="test")
    samples = list(loaded)
    assert len(samples) == 300 and loaded.errors.total == 0
    assert loaded.notes["boxes clamped to the image"] == 40  # the README's 40 of 1,756 boxes past the edge
    assert {s.metadata["type"] for s in samples} == {"v_bar", "h_bar"}
    for s in samples[::15]:
        key = "x_values_bbox" if s.metadata["type"] == "v_bar" else "y_values_bbox"
        boxes = s.metadata[key]
        w, h = s.images[0].size
        assert all(0 <= b["x1"] <= b["x2"] < w and 0 <= b["y1"] <= b["y2"] < h for b in boxes)
        drawn = focus(s.images[0], [boxes[0]["label"]], boxes, "draw", keep_first=False)
        assert _changed_inside(s.images[0], drawn, boxes[0]), s.id


def test_real_chartqa_train_trajectories_skip_their_one_inverted_box(realdata):
    loaded = refocus(path=str(realdata / "chartqa_train_refocus_sft"), split="train", on_error="skip")
    samples = list(loaded)
    assert len(samples) == 99 and dict(loaded.errors.skipped) == {"inverted box": 1}
    assert "two_col_62787" in next(iter(loaded.errors.examples.values()))
    assert all(s.metadata["thoughts"] for s in samples)  # the ReFOCUS trajectories ride along
    with pytest.raises(DataError, match="inverted"):
        list(refocus(path=str(realdata / "chartqa_train_refocus_sft"), split="train"))


def test_real_chartqa_line_and_pie_questions(realdata):
    samples = list(chartqa(path=str(realdata / "chartqa_test_plain"), split="test"))
    assert len(samples) == 150 and all(s.answers[0] for s in samples)
    assert {s.metadata["source"] for s in samples} == {"human", "augmented"}


def test_real_wtq_tables_keep_duplicate_row_starters(realdata):
    samples = list(tablevqa(path=str(realdata / "wtq_vwtq_rendered_tables")))
    assert len(samples) == 150
    duplicated = [s for s in samples
                  if len({b["label"] for b in s.metadata["rows_bbox"]}) < len(s.metadata["rows_bbox"])]
    assert len(duplicated) == 56  # as the README counts: keyed by row starter, these would lose rows
    multi = [s for s in samples if "||" in s.answers[0]]
    assert len(multi) == 3
    s = samples[0]
    columns = s.metadata["columns_bbox"]
    masked = focus(s.images[0], [columns[1]["label"]], columns, "mask", keep_first=False)
    assert _changed_inside(s.images[0], masked, columns[0]) and not _changed_inside(s.images[0], masked, {
        **columns[1], "x1": columns[1]["x1"] + 3, "x2": columns[1]["x2"] - 3})
