"""VTool-R1's own files: parquets written as its preprocessing scripts write them, from the real rows in
../shared/realdata, read by the ``refocus`` loader and reported by ``vlrl data check``.

The scripts (VTool-R1/VTool-R1 ``preprocess/chartqa_dataset_creator.py`` and
``table_dataset_creator.py``) keep a chart's boxes as ``{label: box}`` maps in a ``metadata``
dict (Arrow makes it a struct holding every label of the file, ``None`` where a chart lacks
it), write ``{"x1": "none"}`` for an empty axis, join a list answer's items with ``|||``, and
for tables scale the normalised boxes to pixels and store ``metadata`` as a JSON string with
the row boxes under ``row_starters``.
"""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from test_cli import vlrl
from vlrl.builtin.envs.visual_tool import VisualToolEnv
from vlrl.builtin.tasks.loaders import refocus
from vlrl.builtin.tools.focus import focus
from vlrl.config import EnvConfig, SandboxConfig
from vlrl.data.check import check
from vlrl.registry import resolve
from vlrl.rollout.play import text_turn

ROOT = Path(__file__).resolve().parents[1]

CHART_ROWS = 60  # every fifth of the 300: both orientations, so each axis is empty somewhere


def _image_bytes(path: Path) -> bytes:
    with Image.open(path) as img:
        buffer = io.BytesIO()
        img.save(buffer, format=img.format)
        return buffer.getvalue()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _listed(value: str | list) -> list:
    """The rendered tables keep some lists as their Python repr."""
    return ast.literal_eval(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def vtool_chart(realdata, tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = realdata / "chartqa_test_refocus_bbox"
    records = _rows(folder / "test.jsonl")[::5]
    columns: dict[str, list] = {k: [] for k in ("metadata", "figure_id", "figure_path", "query", "prompt", "answer",
                                                "images")}
    for r in records:
        x = dict(zip(r["x_values"], r["x_values_bbox"]))
        y = dict(zip(r["y_values"], r["y_values_bbox"]))
        columns["metadata"].append({"type": r["source"], "figure_bbox": r["figure_bbox"],
                                    "x_values_bbox": x or {"x1": "none"}, "y_values_bbox": y or {"x1": "none"}})
        columns["figure_id"].append(r["id"])
        columns["figure_path"].append(r["image"])
        columns["query"].append(r["question"])
        columns["prompt"].append(f"<image> # USER REQUEST #: {r['question']}")
        columns["answer"].append(r["answer"])
        columns["images"].append([_image_bytes(folder / r["image"])])
    out = tmp_path_factory.mktemp("vtool") / "val_full.parquet"
    datasets.Dataset.from_dict(columns).to_parquet(str(out))
    return out, records


@pytest.fixture(scope="module")
def vtool_table(realdata, tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = realdata / "wtq_vwtq_rendered_tables"
    records = _rows(folder / "data.jsonl")
    columns: dict[str, list] = {k: [] for k in ("metadata", "figure_id", "figure_path", "query", "prompt", "answer",
                                                "images")}
    for r in records:
        width, height = r["image_width"], r["image_height"]
        scaled = {}
        for key in ("columns_bbox", "rows_bbox"):
            scaled[key] = [{"x1": b["x1"] * width, "x2": b["x2"] * width, "y1": b["y1"] * height,
                            "y2": b["y2"] * height} for b in _listed(r[key])]
        headers, starters = _listed(r["column_headers"]), _listed(r["row_starters"])
        columns["metadata"].append(json.dumps({
            "type": "table", "figure_bbox": r["table_bbox"],
            "columns_bbox": dict(zip(headers, scaled["columns_bbox"])),
            "row_starters": dict(zip(starters, scaled["rows_bbox"]))}))
        columns["figure_id"].append(r["qa_id"])
        columns["figure_path"].append(r["figure_path"])
        columns["query"].append(r["question"])
        columns["prompt"].append(f"<image># USER REQUEST #: {r['question']}")
        columns["answer"].append("|||".join(str(a) for a in r["answer_list"]))
        columns["images"].append([_image_bytes(folder / r["figure_path"])])
    out = tmp_path_factory.mktemp("vtool") / "table_test.parquet"
    datasets.Dataset.from_dict(columns).to_parquet(str(out))
    return out, records


def test_a_vtool_chart_file_loads_every_row_with_its_boxes(vtool_chart):
    path, records = vtool_chart
    meta = datasets.load_dataset("parquet", data_files=str(path), split="train")[0]["metadata"]
    assert meta["x_values_bbox"]["x1"] in ("none", None)  # the struct form the fixture must reproduce
    assert sum(box is None for box in meta["y_values_bbox"].values()) > 0
    loaded = refocus(path=str(path))
    samples = list(loaded)
    assert len(samples) == len(records) and loaded.errors.total == 0
    for s, r in zip(samples, records):
        assert s.metadata["type"] == r["source"].removeprefix("chartqa_")
        for key, labels, boxes, across in (("x_values_bbox", r["x_values"], r["x_values_bbox"], "x1"),
                                           ("y_values_bbox", r["y_values"], r["y_values_bbox"], "y1")):
            if labels:  # a map keeps one box per label (VTool-R1's tools see the same), in the order drawn
                kept = dict(zip(labels, boxes))
                assert [b["label"] for b in s.metadata[key]] == sorted(kept, key=lambda label: kept[label][across])
            else:  # the {"x1": "none"} sentinel is no axis, not a label "x1"
                assert key not in s.metadata
        assert s.answers == (r["answer"],)


def test_vtool_binding_gives_a_bar_charts_value_boxes_to_the_column_and_row_tools(vtool_chart, tokenizer, vision):
    path, _ = vtool_chart
    env = VisualToolEnv(EnvConfig(sandbox=SandboxConfig(workers=1)), tokenizer, vision)
    for s in refocus(path=str(path), tool_binding="vtool"):
        values = s.metadata["x_values_bbox" if s.metadata["type"] == "v_bar" else "y_values_bbox"]
        assert s.metadata["columns_bbox"] == s.metadata["rows_bbox"] == values
        assert {"focus_on_columns_with_draw", "focus_on_rows_with_mask"} <= {t.name for t in env.offered(s.metadata)}
    plain = next(iter(refocus(path=str(path))))
    assert "columns_bbox" not in plain.metadata and "rows_bbox" not in plain.metadata


def test_a_vtool_table_file_keeps_row_and_column_boxes_and_offers_the_row_tools(vtool_table, tokenizer, vision):
    path, records = vtool_table
    loaded = refocus(path=str(path))
    samples = list(loaded)
    assert len(samples) == len(records) and loaded.errors.total == 0
    env = VisualToolEnv(EnvConfig(sandbox=SandboxConfig(workers=1)), tokenizer, vision)
    for s, r in zip(samples, records):
        kept = dict(zip(_listed(r["row_starters"]), _listed(r["rows_bbox"])))  # a repeated starter: its last row
        assert [b["label"] for b in s.metadata["rows_bbox"]] == sorted(kept, key=lambda label: kept[label]["y1"])
        assert len(s.metadata["columns_bbox"]) == len(set(_listed(r["column_headers"])))
        header, pixels = s.metadata["rows_bbox"][0], _listed(r["rows_bbox_px"])[0]  # scaled to pixels as the file
        assert abs(header["y1"] - pixels["y1"]) <= 1 and abs(header["y2"] - pixels["y2"]) <= 1
        assert "focus_on_rows_with_draw" in {t.name for t in env.offered(s.metadata)}
    lists = [s for s, r in zip(samples, records) if len(r["answer_list"]) > 1]
    assert lists and all(s.answers == ("||".join(r["answer_list"]),) for s, r in zip(samples, records)
                         if len(r["answer_list"]) > 1)


def test_a_list_answer_expects_every_item_in_any_order(vtool_table):
    path, records = vtool_table
    reward = resolve("reward", "chartqa_relaxed_list")
    for s, r in zip(refocus(path=str(path)), records):
        items = r["answer_list"]
        if len(items) < 2:
            continue
        backwards = " || ".join(reversed(items))
        assert reward(f"THOUGHT 1: read the rows.\nFINAL ANSWER: {backwards} TERMINATE", s.answers).total == 1.0
        assert reward(f"FINAL ANSWER: {items[0]} TERMINATE", s.answers).total == 0.0


def test_data_check_reports_rows_skips_boxes_and_clamps(vtool_chart, vtool_table, tmp_path):
    chart = check(str(vtool_chart[0]))
    assert chart["format"] == "refocus" and chart["rows"] == chart["samples"] == CHART_ROWS
    assert chart["skipped"] == {} and set(chart["boxes"]) == {"x_values_bbox", "y_values_bbox"}
    assert chart["boxes"]["x_values_bbox"] + chart["boxes"]["y_values_bbox"] == CHART_ROWS
    table = check(str(vtool_table[0]))
    assert table["boxes"] == {"columns_bbox": 150, "rows_bbox": 150} and table["normalised"] == {
        "columns_bbox": 0, "rows_bbox": 0}
    # a row whose boxes are inverted and one whose image is corrupt: skipped, each by its reason
    bad = datasets.load_dataset("parquet", data_files=str(vtool_table[0]), split="train").select(range(4)).to_list()
    meta = json.loads(bad[0]["metadata"])
    first = next(iter(meta["columns_bbox"]))
    box = meta["columns_bbox"][first]
    meta["columns_bbox"][first] = {**box, "x1": box["x2"] + 5}
    bad[0]["metadata"] = json.dumps(meta)
    bad[1]["images"] = [b"not a png"]
    datasets.Dataset.from_list(bad).to_parquet(str(tmp_path / "bad.parquet"))
    out = vlrl("data", "check", str(tmp_path / "bad.parquet"), "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["rows"] == 4 and figures["samples"] == 2
    assert figures["skipped"] == {"inverted box": 1, "corrupt image": 1}
    assert "row 0" in out and "row 1" in out


def test_the_vtool_templates_run_an_episode_as_vtool_r1_trained_models_write_it(vtool_chart, run, tokenizer, vision):
    """The paper's turn format end to end: a THOUGHT / ACTION turn whose python calls a column tool on a chart
    (VTool-R1's binding), the OBSERVATION, then ``FINAL ANSWER: ... TERMINATE`` scored by the task's reward."""
    sample = next(iter(refocus(path=str(vtool_chart[0]), tool_binding="vtool")))
    config = EnvConfig(templates=str(ROOT / "configs/templates/vtool_r1"), action_formats=["code"], max_turns=2,
                       sandbox=SandboxConfig(workers=1, timeout_s=5.0, cpu_seconds=3.0))
    env = VisualToolEnv(config, tokenizer, vision)
    run(env.__aenter__())
    try:
        episode = env.reset(sample, "vtool")
        system, question = episode.transcript[0].text, episode.transcript[1].text
        assert "focus_on_columns_with_draw(image" in system and "TERMINATE" in system and "||" in system
        labels = [b["label"] for b in sample.metadata["columns_bbox"]]
        assert question.startswith(f"# USER REQUEST #: {sample.question}")
        assert f"columns_bbox holds the boxes of {json.dumps(labels)}" in question
        action = (f"THOUGHT 0: I need the bar of {labels[0]}.\nACTION 0:\n```python\n"
                  f"image_2 = focus_on_columns_with_draw(image_1, {json.dumps(labels[:1])}, columns_bbox)\n"
                  "display(image_2)\n```")
        step = run(episode.step(text_turn(tokenizer, action)))
        assert step.observation.text.startswith("OBSERVATION: Execution success. The edited image is image_2.")
        assert "last turn" in step.observation.text
        expected = focus(sample.images[0], labels[:1], sample.metadata["columns_bbox"], "draw", keep_first=False)
        assert np.array_equal(np.asarray(step.observation.images[0]), np.asarray(expected))
        done = run(episode.step(text_turn(tokenizer, f"THOUGHT 1: It reads so.\nFINAL ANSWER: "
                                                     f"{sample.answers[0]}. TERMINATE")))
        assert done.reason == "answer" and episode.trajectory.answer == sample.answers[0]
        reward = resolve("reward", "chartqa_relaxed_list")
        assert reward(episode.transcript[-1].text, sample.answers).total == 1.0
    finally:
        run(env.__aexit__(None, None, None))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["vtool_r1_chart", "vtool_r1_table"])
def test_the_vtool_r1_recipes_run_end_to_end_on_the_real_data(recipe, vtool_chart, vtool_table, tiny_dir,
                                                              tmp_path_factory, tmp_path):
    """Each recipe as shipped, shrunk to the CPU: the tiny model as the policy and a tiny text-only model as the
    judge, on VTool-R1's own files built from ../shared/realdata; the settings that make the recipe stay."""
    from vlrl.model.tiny import build_tiny_text_model

    judge = build_tiny_text_model(tmp_path_factory.mktemp("judge") / "tiny-text")
    data = vtool_chart[0] if recipe.endswith("chart") else vtool_table[0]
    out = vlrl("train", f"configs/{recipe}.yaml", f"model.path={tiny_dir}", "model.dtype=float32",
               "model.min_pixels=0", "model.max_pixels=0", "engine.kind=hf", "engine.tensor_parallel_size=1",
               "engine.max_num_seqs=16", "env.sandbox.workers=1", "env.max_context_tokens=8192",
               f"task.args.path={data}", "rollout.prompts_per_step=2", "rollout.group_size=2",
               "rollout.max_new_tokens=16", "optim.gradient_checkpointing=false", "optim.autocast=none",
               "optim.micro_batch_tokens=16384", f"reward_judge.model={judge}", "reward_judge.max_tokens=8",
               "heldout.samples=2", "steps=2", "checkpoint_every=0", f"log.dir={tmp_path}", "log.wandb=disabled",
               "log.progress=false").stdout
    assert "run written" in out
    run = tmp_path / "latest"
    config = (run / "config.yaml").read_text()
    for kept in ("loss_mask: final_turn", "dual_clip: 3.0", "clip_high: 0.3", "kl_coef: 0.01", "group_size: 2",
                 "templates: configs/templates/vtool_r1", "max_tool_calls: 1", "weight_decay: 0.01"):
        assert kept in config, kept
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "reward/mean" in line]
    assert len(steps) == 2 and all(s["reward/mean"] == pytest.approx(s["reward/judge"]) for s in steps)
    transcript = next((run / "transcripts").rglob("*.md")).read_text()
    assert "# USER REQUEST #" in transcript and "THOUGHT 0" in transcript
