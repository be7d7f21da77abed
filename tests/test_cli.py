"""The commands a user types, run as subprocesses exactly as typed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VLRL = [sys.executable, "-m", "vlrl.cli"]


def vlrl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*VLRL, *args], capture_output=True, text=True, cwd=ROOT, check=check, timeout=900)


def test_model_tiny_is_deterministic(tmp_path):
    vlrl("model", "tiny", "--out", str(tmp_path / "a"), "--seed", "3")
    vlrl("model", "tiny", "--out", str(tmp_path / "b"), "--seed", "3")
    a, b = tmp_path / "a", tmp_path / "b"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name


@pytest.mark.slow
def test_generate_with_hf_prints_samples(tiny_dir):
    out = vlrl("generate", "configs/generate.yaml", f"model.path={tiny_dir}", "n=2", "sampling.max_tokens=8").stdout
    assert out.count("sample ") == 2 and "tokens/s" in out


def test_generate_rejects_bad_config_and_inputs(tiny_dir, tmp_path):
    bad = vlrl("generate", "configs/generate.yaml", "engine.kindd=hf", check=False)
    assert bad.returncode != 0 and "unknown key 'engine.kindd'" in bad.stderr
    missing = vlrl("generate", "configs/generate.yaml", f"model.path={tmp_path / 'absent'}", check=False)
    assert missing.returncode != 0 and "absent" in missing.stderr and "does not exist" in missing.stderr
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    broken = vlrl("generate", "configs/generate.yaml", f"model.path={tiny_dir}", f"image={corrupt}", check=False)
    assert broken.returncode != 0 and "cannot read image" in broken.stderr and "corrupt.png" in broken.stderr


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_engine_json(tiny_dir):
    out = vlrl("bench", "engine", "--quick", "--json", "--model", str(tiny_dir)).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    for kind in ("hf", "vllm"):
        assert set(figures[f"{kind}_tokens_per_s"]) == {"1", "8", "32"}
        assert all(v > 0 for v in figures[f"{kind}_tokens_per_s"].values())
        assert figures[f"parity_{kind}_mean_abs"] < 1e-3


def test_tools_list_shows_every_builtin_and_a_users_file(tmp_path):
    out = vlrl("tools", "list").stdout
    assert out.count("focus_on_") == 12 and "zoom_in(" in out
    assert "all_columns_bounding_boxes <- metadata['columns_bbox']" in out
    user = tmp_path / "mine.py"
    user.write_text("from vlrl.tool import tool\n\n@tool\ndef ping(text: str) -> str:\n    '''Echo.'''\n    return text\n")
    schemas = json.loads(vlrl("tools", "list", str(user), "--json").stdout)
    assert schemas == [{"type": "function", "function": {"name": "ping", "description": "Echo.", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}]
    bad = vlrl("tools", "list", "nope_tool", check=False)
    assert bad.returncode == 2 and "unknown tool 'nope_tool'" in bad.stderr


def test_tools_run_one_action_prints_one_json_object(tmp_path):
    from vlrl.demo import bar_chart

    image = tmp_path / "chart.png"
    bar_chart([3, 7, 5], size=(120, 90)).save(image)
    boxes = json.dumps({"x_values_bbox": [{"label": str(i), "x1": 40 * i, "y1": 0, "x2": 40 * i + 39, "y2": 89}
                                          for i in range(3)]})
    call = json.dumps({"name": "focus_on_x_values_with_draw", "arguments": {"x_values_to_focus_on": ["1"]}})
    out = vlrl("tools", "run", "--call", call, "--image", str(image), "--metadata", boxes, "--out", str(tmp_path / "o"))
    report = json.loads(out.stdout)
    assert report["ok"] and report["error"] is None and report["seconds"] > 0
    from PIL import Image

    assert Image.open(report["images"][0]).getpixel((40 + 2, 2)) == (255, 0, 0)  # the outline's corner

    code = tmp_path / "action.py"
    code.write_text("print('zooming')\ndisplay(zoom_in(image_1, [0, 0, 59, 44], factor=2))\n")
    report = json.loads(vlrl("tools", "run", "--code", str(code), "--image", str(image),
                             "--out", str(tmp_path / "c")).stdout)
    assert report["ok"] and "zooming" in report["stdout"]
    assert Image.open(report["images"][0]).size == (120, 90)

    hostile = tmp_path / "hostile.py"
    hostile.write_text("while True:\n    pass\n")
    report = json.loads(vlrl("tools", "run", "--code", str(hostile), "--image", str(image), "--timeout", "1",
                             "--out", str(tmp_path / "h")).stdout)
    assert not report["ok"] and "time limit" in report["error"] and report["images"] == []


@pytest.mark.slow
def test_bench_tools_json():
    out = vlrl("bench", "tools", "--calls", "40", "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert set(figures) == {"p50_ms", "p95_ms", "first_call_p50_ms", "calls_per_s", "inprocess_p50_ms"}
    assert 0 < figures["inprocess_p50_ms"] < figures["p50_ms"] <= figures["p95_ms"]
    assert figures["first_call_p50_ms"] > figures["inprocess_p50_ms"]


@pytest.mark.parametrize("agent", ["scripted", "random"])
def test_env_play_writes_transcripts_images_and_a_summary(tiny_dir, tmp_path, agent):
    out = tmp_path / agent
    result = vlrl("env", "play", "--task", "synthetic_charts", "--agent", agent, "--n", "5", "--out", str(out),
                  "--model", str(tiny_dir), "--seed", "1", "env.action_formats=[json,code]")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 5 and sum(summary["finish"].values()) == 5
    for k in range(5):
        folder = out / f"episode-{k}"
        record = json.loads((folder / "trajectory.json").read_text())
        pngs = sorted(folder.glob("image_*.png"))
        assert len(pngs) == record["images"] >= 1
        transcript = (folder / "transcript.md").read_text()
        assert transcript.count("## assistant") == record["turns"] and f"**finish:** {record['finish_reason']}" \
            in transcript
        assert len(record["token_ids"]) == len(record["loss_mask"])
    if agent == "scripted":  # it knows the answers and uses one tool per question
        assert summary["finish"] == {"answer": 5} and summary["tool_calls"] == 5 and summary["tool_errors"] == 0
        assert result.stdout.count("answer=") == 5
        for line in result.stdout.splitlines()[:5]:
            answer, expected = line.split("answer=")[1].split(" (expected ")
            assert answer == expected.split(")")[0]
    else:  # the fuzzer's broken actions are counted, never fatal
        assert summary["tool_errors"] + summary["parse_errors"] > 0


def test_env_play_names_a_bad_task_or_agent(tiny_dir, tmp_path):
    bad = vlrl("env", "play", "--task", "no_such_task", "--model", str(tiny_dir), "--out", str(tmp_path), check=False)
    assert bad.returncode == 2 and "unknown task 'no_such_task'" in bad.stderr
    bad = vlrl("env", "play", "--agent", "nobody", "--model", str(tiny_dir), "--out", str(tmp_path), check=False)
    assert bad.returncode == 2 and "unknown agent 'nobody'" in bad.stderr


def test_data_score_prints_means_per_split_and_names_bad_rows(tmp_path):
    rows = [
        {"prediction": "62%", "answer": "62", "split": "human"},  # wrong officially
        {"prediction": "0.62", "answer": ["61", "62%"], "split": "human"},  # right: 62% is 0.62
        {"prediction": "FINAL ANSWER: yes", "answer": "Yes", "split": "augmented"},
    ]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = vlrl("data", "score", "--reward", "chartqa_relaxed", "--pred", str(pred), "--json").stdout
    assert json.loads(out.splitlines()[-1]) == {"overall": 66.67, "human": 50.0, "augmented": 100.0, "n": 3}
    lenient = vlrl("data", "score", "--reward", "chartqa_lenient", "--pred", str(pred), "--json").stdout
    assert json.loads(lenient.splitlines()[-1])["overall"] == 100.0
    pred.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prediction": "1"}) + "\n")
    bad = vlrl("data", "score", "--reward", "chartqa_relaxed", "--pred", str(pred), check=False)
    assert bad.returncode == 2 and f"{pred}:2: missing field 'answer'" in bad.stderr


@pytest.mark.slow
def test_bench_train_json():
    out = vlrl("bench", "train", "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert set(figures) == {"step_s", "rollout_s", "update_s", "sync_s", "tokens_per_s"}
    assert figures["step_s"] >= figures["rollout_s"] + figures["update_s"] and figures["tokens_per_s"] > 0


def test_bench_memory_json(tiny_dir):
    """Each figure from a process of its own: a trainer step holds more than the logprob forward (gradients and
    AdamW's moments), the model alone less than either; the KV cache per 1k tokens is the tiny model's layout
    (2 x 4 layers x 2 key/value heads x 64 x 4 bytes per token)."""
    out = vlrl("bench", "memory", "--model", str(tiny_dir), "--lengths", "1200", "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["vocab"] == 2046 and figures["shape"] is None  # the tiny model: the tokenizer's size
    train, logprobs = figures["trainer_peak_gb"]["1200"], figures["logprob_peak_gb"]["1200"]
    assert train > logprobs > 0 and figures["trainer_tokens_per_s"]["1200"] > 0
    assert figures["kv_gb_per_1k_tokens"] * 2**30 == pytest.approx(2 * 4 * 2 * 64 * 4 * 1000)
    assert "the model loaded, before any step" in out


def test_a_memory_trajectory_has_its_length_and_four_images(tokenizer, vision):
    from vlrl.bench.memory import IMAGES, trajectory

    traj = trajectory(tokenizer, vision, 1500)
    assert len(traj.token_ids) == 1500 and len(traj.images) == IMAGES
    assert sum(traj.loss_mask) > 1500 - IMAGES * 300  # the rest is policy text, trained on
    with pytest.raises(ValueError, match="a 600-token trajectory cannot hold 4 images"):
        trajectory(tokenizer, vision, 600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: scripts/gpu_overlap.sh runs the benchmark")
def test_bench_overlap_on_a_gpu_says_there_is_none_here():
    result = vlrl("bench", "overlap", "--device", "cuda", "--steps", "1", check=False)
    assert result.returncode == 2 and "--device cuda: torch sees no CUDA device on this machine" in result.stderr


def test_bench_overlap_pairs_each_speedup_with_its_own_rounds_sync():
    """Over repeated rounds a speedup is over the sync that ran beside it (the machine's speed drifts over hours):
    the mean of the paired ratios, not the ratio of the means."""
    from vlrl.bench.overlap import merged, paired_speedups, run_name

    rounds = [{"sync": {"step_s": 10.0, "max_length": 50.0}, "inter": {"step_s": 8.0, "max_length": 70.0}},
              {"sync": {"step_s": 12.0, "max_length": 90.0}, "inter": {"step_s": 12.0, "max_length": 60.0}}]
    assert paired_speedups(rounds) == {"inter": (1.125, 1.0, 1.25)}  # 10 / 8 and 12 / 12 (the means: 11 / 10)
    assert merged([r["inter"] for r in rounds]) == {"step_s": 10.0, "max_length": 70.0}
    assert [run_name("intra+inter", k) for k in (1, 2)] == ["intra-inter", "intra-inter-round2"]


@pytest.mark.slow
def test_bench_overlap_json_and_the_timelines_it_keeps(tmp_path):
    from vlrl.bench.overlap import speedup_key

    out = vlrl("bench", "overlap", "--workload", "longtail-charts", "--schedules", "sync,intra,disaggregated",
               "--steps", "1", "--keep", str(tmp_path / "runs"), "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert {"workload", "rollout_share_sync", "speedup_intra", "speedup_disaggregated", "best", "bubble_sync",
            "bubble_overlap", "efficiency_best", "reward_sync", "reward_overlap"} <= set(figures)
    assert figures["workload"] == "longtail-charts" and figures["best"] in ("intra", "disaggregated")
    assert all(figures[k] > 0 for k in figures if k.startswith("speedup"))
    assert all(0 <= figures[k] <= 1 for k in ("bubble_sync", "bubble_overlap", "reward_sync", "reward_overlap",
                                              "rollout_share_sync", "efficiency_best"))
    assert figures["verifier_hidden_intra"] > 0  # streamed in chunks, part of the verifier's prefill ran early
    # the engine's seconds per decode forward of each schedule, the machine's speed as it ran (the replica's too)
    assert set(figures["decode_ms"]) == {"sync", "intra", "disaggregated"} and min(figures["decode_ms"].values()) > 0
    assert figures["rounds"] == 1 and all(low == high == figures[speedup_key(name)]
                                          for name, (low, high) in figures["range_over_rounds"].items())
    # sync's step is its rollout plus its update; the bound is the step over the update alone, so above 1
    assert figures["speedup_bound"] > 1 and "a schedule that hid the whole rollout would reach" in out
    for schedule in ("sync", "intra", "disaggregated"):  # each schedule ran its 1 + 1 steps and drew them
        [run] = (tmp_path / "runs").glob(f"{schedule}-2*")
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and (run / "timeline.png").exists()
    disaggregated = [json.loads(line) for line in next((tmp_path / "runs").glob("disaggregated-2*")).joinpath(
        "metrics.jsonl").read_text().splitlines()]
    assert all(r["sched/requests_paused"] == 0 and "engine/replica_0_requests" in r for r in disaggregated)
    assert "disaggregated |" in out and "rollout s | update s" in out and "efficiency" in out
    # the twin re-runs each of them from its config and lengths.jsonl, and says how far off it was
    from test_plan import cost_file

    out = vlrl("plan", "--validate", str(tmp_path / "runs"), "--costs", str(cost_file(tmp_path / "costs.json")),
               "--json").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["cases"] == 3 and 0 <= figures["mean_rel_error"] <= figures["max_rel_error"]
    assert "measured s | predicted s" in out and "rollout s measured / predicted" in out
    assert "engine busy s measured / predicted" in out  # the engine's own seconds, beside the twin's
    # fitted to the runs' own counters, each run predicted from the others of its placement (sync from intra's,
    # intra from sync's; the only disaggregated run from the cost file)
    out = vlrl("plan", "--validate", str(tmp_path / "runs"), "--costs", str(tmp_path / "costs.json"), "--fit",
               str(tmp_path / "runs"), "--json").stdout
    assert "each run predicted from the others" in out and json.loads(out.strip().splitlines()[-1])["cases"] == 3
