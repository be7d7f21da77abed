"""`vlrl train` end to end: metrics, curves, checkpoints, weights reaching the engine, resume equality."""

from __future__ import annotations

import json
import math
import re
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from test_cli import ROOT, vlrl
from vlrl.config import ConfigError, TrainConfig, load_config
from vlrl.metrics import documented


def weights(run, step):
    return load_file(run / "checkpoints" / f"step-{step}" / "model" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_train_logs_learns_checkpoints_and_serves_new_weights(train_config, tmp_path, tiny_dir, kind):
    vlrl("train", str(train_config), f"engine.kind={kind}", "log.wandb=offline")
    run = (tmp_path / "runs" / "latest").resolve()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        assert {"reward/mean", "reward/accuracy", "rollout/tool_call_rate", "loss/entropy", "loss/grad_norm",
                "loss/clip_fraction", "loss/parity", "perf/rollout_s", "perf/update_s", "perf/sync_s",
                "perf/tokens_per_s", "rollout/response_length", "rollout/turns"} <= set(r)
        assert all(documented(name) for name in r if name != "step")  # every logged figure is in docs/metrics.md
        assert r["rollout/behavior_version"] == r["step"]  # each step samples with the weights of the step before
        assert r["perf/version"] == r["step"] + 1 and r["loss/parity"] < 1e-3
    assert all((run / f).is_file() for f in ("reward.png", "accuracy.png", "config.yaml", "summary.json"))
    assert (run / "transcripts" / "step-2").is_dir() and not (run / "transcripts" / "step-1").exists()
    assert list((run / "wandb").glob("offline-run-*"))  # tracked offline, ready for `wandb sync`
    initial = load_file(tiny_dir / "model.safetensors")
    final = weights(run, 3)
    assert any(not torch.equal(initial[k], final[k]) for k in final)


@pytest.mark.slow
def test_the_configs_pixel_bounds_size_every_image_the_run_decodes_and_trains_on(train_config, tmp_path):
    """model.max_pixels at 16 visual tokens: every prompt is shorter than at the folder's bounds by the same
    questions' image tokens, and the trainer reads the images as the engine did (its logprobs agree)."""
    lengths = {}
    for name, bounds in (("folder", []), ("bounded", ["model.max_pixels=12544"])):
        vlrl("train", str(train_config), "steps=1", "checkpoint_every=0", f"log.dir={tmp_path / name}", *bounds)
        run = (tmp_path / name / "latest").resolve()
        lengths[name] = [t[0] for t in json.loads((run / "lengths.jsonl").read_text().splitlines()[0])["trajectories"]]
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss/parity"] < 1e-3
    assert len(lengths["folder"]) == len(lengths["bounded"]) == 6
    assert all(b < f for f, b in zip(lengths["folder"], lengths["bounded"]))


@pytest.mark.slow
def test_a_verifier_model_judges_every_trajectory_while_it_streams(train_config, tmp_path):
    """The verifier's processor makes smaller images than the policy's: the image runs it reads are resized."""
    vlrl("model", "tiny", "--out", str(tmp_path / "verifier"), "--max-pixels", "12544")
    vlrl("train", str(train_config), "rollout.schedule=async", f"verifier.model={tmp_path / 'verifier'}",
         "verifier.weight=0.25",
         "verifier.chunk_tokens=auto", "verifier.chunk_candidates=[24, 8]", "verifier.chunk_window=1",
         "checkpoint_every=0")
    run = (tmp_path / "runs" / "latest").resolve()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert 0.0 < r["reward/verifier"] < 1.0
        assert math.isclose(r["reward/mean"], 0.75 * r["reward/accuracy"] + 0.25 * r["reward/verifier"],
                            abs_tol=1e-9)
        assert r["verifier/early_tokens"] > 0 and 0.0 < r["verifier/hidden_fraction"] < 1.0
    assert [r["verifier/chunk_tokens"] for r in records[:2]] == [24, 8]  # auto: each candidate for 1 step, in order
    assert records[2]["verifier/chunk_tokens"] in (24, 8)  # then the faster of the two


def groups_accounted(records, group_size):
    """(groups that entered, groups trained + dropped + carried at the end) over a run's records."""
    entered = sum(r["sched/groups_started"] for r in records)
    trained = sum(r["rollout/trajectories"] for r in records) // group_size
    dropped = sum(r["rollout/dropped"].get("staleness", 0) for r in records) // group_size
    return entered, trained + dropped + records[-1]["sched/groups_carried"]


@pytest.mark.slow
def test_overlap_trains_every_group_once_or_drops_it_and_survives_resume(train_config, tmp_path):
    overlap = ["rollout.schedule=overlap", "rollout.extra_groups=2", "rollout.max_staleness=1", "steps=4"]
    vlrl("train", str(train_config), *overlap, "log.timeline=2")
    whole = (tmp_path / "runs" / "latest").resolve()
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["sched/groups_started"] == 4  # B = 2 groups of 3, and Δ = 2
    assert all(r["rollout/trajectories"] == 6 for r in records)
    assert all(r["sched/extra_groups"] == 2 and 0.0 <= r["sched/deferred_fraction"] <= 1.0 for r in records)
    assert all(0.0 <= r["perf/engine_busy_fraction"] < 1.0 and 0.0 <= r["perf/bubble_ratio"] <= 1.0
               for r in records)
    assert records[0]["perf/engine_busy_fraction"] > 0.0  # (a later step may close on groups that ended before it)
    trace = json.loads((whole / "timeline.json").read_text())["traceEvents"]  # the first 2 steps, drawn
    assert [e["name"] for e in trace if e["ph"] == "i"] == ["step 0", "step 1"]
    rows = {e["args"]["name"] for e in trace if e["ph"] == "M"}
    assert "trainer" in rows and {f"s0-{g}-{k}" for g in range(2) for k in range(3)} <= rows
    assert (whole / "timeline.png").stat().st_size > 10_000
    entered, accounted = groups_accounted(records, 3)
    assert entered == accounted
    groups = json.loads((whole / "summary.json").read_text())["groups"]  # the run's own account says the same
    dropped = sum(groups["dropped_trajectories"].values()) // 3
    assert groups["entered"] == entered == groups["trained"] + dropped + groups["in_flight_at_end"]
    assert groups["in_flight_at_end"] == records[-1]["sched/groups_carried"]
    pending = torch.load(whole / "checkpoints" / "step-2" / "state.pt", weights_only=False)["pending"]
    vlrl("train", str(train_config), *overlap, f"resume={whole / 'checkpoints' / 'step-2'}")
    resumed = (tmp_path / "runs" / "latest").resolve()
    after = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()][2:]
    entered, accounted = groups_accounted(after, 3)
    assert len(pending) + entered == accounted  # the checkpoint's groups in flight were started again


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights(train_config, tmp_path):
    vlrl("train", str(train_config))
    whole = (tmp_path / "runs" / "latest").resolve()
    vlrl("train", str(train_config), f"resume={whole / 'checkpoints' / 'step-1'}")
    resumed = (tmp_path / "runs" / "latest").resolve()
    assert resumed != whole
    a, b = weights(whole, 3), weights(resumed, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads(line)["reward/mean"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert history == [json.loads(line)["reward/mean"] for line in (whole / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("override, message", [
    ("rollout.groupsize=4", "unknown key 'rollout.groupsize'"),
    ("rollout.group_size=0", "group_size must be >= 1, got 0"),
    ("rollout.group_size=1", "group_size must be >= 2 for GRPO"),
    ("optim.lr=-1", "lr must be > 0"),
    ("algo.mini_batches=4", "group_size = 6 trajectories is not divisible by algo.mini_batches = 4"),
    ("model.path=/nowhere", "model folder '/nowhere' does not exist"),
    ("task.name=no_such_task", "unknown task 'no_such_task'"),
    ("resume=/nowhere", "not a vlrl checkpoint"),
    ("verifier.model=/nowhere", "model folder '/nowhere' does not exist"),
    ("verifier.chunk_tokens=-1", "chunk_tokens must be >= 0 or auto, got -1"),
    ("verifier.chunk_candidates=[0]", "chunk_candidates must be positive token counts, got [0]"),
    ("verifier.chunk_window=0", "chunk_window and chunk_retry_every must be >= 1, got 0 and 50"),
    ("verifier.weight=2", "weight must be in [0, 1], got 2"),
    ("rollout.extra_groups=-1", "extra_groups must be >= 0 or auto, got -1"),
    ("rollout.schedule=later", "not one of ['sync', 'async', 'overlap']"),
    ("log.timeline=-1", "log.timeline must be >= 0, got -1"),
    ("rollout.decode_during_update=true", "decode_during_update keeps the overlap scheduler's groups decoding through "
                                          "the update: it needs rollout.schedule overlap, got 'sync'"),
    ("rollout.max_staleness=-1", "max_staleness must be >= 0 or None, got -1"),
    ("algo.loss.importance_level=group", "not one of ['token', 'sequence']"),
    ("distributed.trainer_threads=-2", "trainer_threads must be >= 0, got -2"),
    ("engine.replicas=2", "engine.replicas = 2 needs distributed.backend: ray"),
    ("distributed.world_size=0", "world_size must be >= 1, got 0"),
    ("distributed.backend=slurm", "not one of ['none', 'ray']"),
    ("distributed.strategy=fsdp", "strategy fsdp shards over trainer ranks: it needs world_size >= 2, got 1"),
    ("distributed.backend=ray distributed.world_size=2 distributed.strategy=fsdp optim.lora_rank=4",
     "distributed.strategy fsdp does not shard LoRA adapters (optim.lora_rank = 4)"),
    ("model.device=cuda", "model.device 'cuda': torch sees no CUDA device on this machine"),
    ("model.device=gpu0", "device must be cpu, cuda or cuda:N, got 'gpu0'"),
    ("model.min_pixels=5000 model.max_pixels=4000", "min_pixels 5000 is above max_pixels 4000"),
    ("model.max_pixels=100", "pixel bounds [3136, 100]"),
    ("verifier.model=policy verifier.max_pixels=3136", "min_pixels / max_pixels size a verifier model of its own"),
    ("determinism=strict rollout.schedule=overlap", "determinism strict needs rollout.schedule 'sync', got 'overlap'"),
    ("determinism=strict engine.kind=vllm", "determinism strict needs engine.kind 'hf', got 'vllm'"),
    ("engine.kind=vllm engine.batch_invariant=true", "batch_invariant decoding is the HF engine's"),
])
def test_bad_config_fails_before_any_work(train_config, tmp_path, override, message):
    result = vlrl("train", str(train_config), *override.split(), check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # no run directory, no engine started


def test_gpu_trainer_ranks_must_ask_ray_for_gpus(train_config):
    overrides = ["model.device=cuda", "distributed.backend=ray", "distributed.world_size=2"]
    with pytest.raises(ConfigError, match=r"distributed.rank_resources must give each rank one \(\{GPU: 1\}\)"):
        load_config(TrainConfig, train_config, overrides)
    cfg = load_config(TrainConfig, train_config, [*overrides, "distributed.rank_resources={GPU: 1}"])
    assert cfg.model.device == "cuda"


def test_the_readme_training_config_is_valid(tmp_path):
    """The README's training config, extracted verbatim, loads."""
    section = (ROOT / "README.md").read_text().split("### Training", 1)[1].split("\n### ", 1)[0]
    path = tmp_path / "readme.yaml"
    path.write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    cfg = load_config(TrainConfig, path)
    assert cfg.algo.loss.clip_high == 0.28 and cfg.env.action_formats == ["code"]


@pytest.mark.slow
def test_the_shipped_quickstart_runs_end_to_end_when_shrunk(tmp_path, tiny_dir):
    """`make quickstart`'s config as shipped (charts and tables, compact prompts, brief teacher, 2 render workers),
    fewer of everything."""
    vlrl("train", "configs/quickstart.yaml", f"model.path={tiny_dir}", f"log.dir={tmp_path / 'runs'}",
         "log.progress=false", "warmstart.samples=16", "warmstart.steps=2", "warmstart.batch_size=8",
         "heldout.samples=8", "steps=2", "rollout.prompts_per_step=2")
    run = (tmp_path / "runs" / "latest").resolve()
    summary = json.loads((run / "summary.json").read_text())
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and summary["heldout_questions"] == 8
    assert {task: split["questions"] for task, split in summary["heldout_by_task"].items()} == {
        "synthetic_charts": 4, "synthetic_tables": 4}  # charts and tables in turn
    # the warm start's push, then one per step that had a group to train (uniform groups are dropped, counted)
    updated = [r for r in steps if "loss/policy" in r]
    assert summary["weights_version"] == 1 + len(updated)
    assert all(r["algo/uniform_groups_dropped"] == 2 for r in steps if r not in updated)
    assert 0 < summary["teacher_tool_call_rate"] <= 1 and summary["majority_baseline"] > 0
    assert "rl_vs_teacher_ci95" in summary


@pytest.mark.slow
def test_the_close_bars_arms_run_shrunk_and_their_teachers_are_right_on_the_same_questions(tmp_path, tiny_dir):
    """configs/close_bars.yaml with its tool and without (`env.tools=[]`): the same held-out questions, and the
    teacher right on the same ones in both arms (equal warm-start material); only the tool arm's teacher calls."""
    runs = {}
    for arm, extra in (("tools", []), ("no-tools", ["env.tools=[]"])):
        vlrl("train", "configs/close_bars.yaml", f"model.path={tiny_dir}", f"log.dir={tmp_path / arm}",
             "log.progress=false", "warmstart.samples=16", "warmstart.steps=2", "warmstart.batch_size=8",
             "heldout.samples=12", "steps=1", "rollout.prompts_per_step=2", *extra)
        run = (tmp_path / arm / "latest").resolve()
        runs[arm] = (json.loads((run / "summary.json").read_text()),
                     [json.loads(line) for line in (run / "heldout.jsonl").read_text().splitlines()])
    (tools, with_tool), (plain, without) = runs["tools"], runs["no-tools"]
    assert [q["id"] for q in with_tool] == [q["id"] for q in without] and len(with_tool) == 12
    assert [q["correct"]["teacher"] for q in with_tool] == [q["correct"]["teacher"] for q in without]
    assert tools["teacher_tool_call_rate"] > 0 and plain["teacher_tool_call_rate"] == 0
    assert not any(q["tool_called"]["rl"] for q in without)


@pytest.mark.slow
def test_warm_start_then_rl_reports_held_out_figures(tmp_path, tiny_dir):
    path = tmp_path / "ws.yaml"
    path.write_text(textwrap.dedent(f"""
        name: ws
        model: {{path: {tiny_dir}}}
        env: {{max_turns: 2, action_formats: [code], sandbox: {{workers: 2}}}}
        task: {{name: synthetic_tables, args: {{difficulty: easy, families: [extrema, comparison]}}}}
        rollout: {{prompts_per_step: 2, group_size: 2, max_new_tokens: 12}}
        algo: {{loss: {{kl_coef: 0.05}}}}
        warmstart: {{agent: teacher, agent_args: {{p_tool: 1.0, p_correct: 0.5}}, samples: 12, steps: 3,
                    batch_size: 4}}
        heldout: {{samples: 6, agent: teacher}}
        steps: 2
        log: {{dir: {tmp_path / 'runs'}, progress: false}}
    """))
    out = vlrl("train", str(path)).stdout
    run = (tmp_path / "runs" / "latest").resolve()
    summary = json.loads((run / "summary.json").read_text())
    assert {"heldout_questions", "teacher_accuracy", "heldout_accuracy_warmstart", "heldout_accuracy_rl",
            "rl_gain_ci95", "rl_vs_teacher_ci95", "majority_baseline", "tool_call_rate_warmstart",
            "tool_call_rate_rl", "wall_seconds", "peak_rss_gb"} <= set(summary)
    assert not any(key.startswith("heldout_correct") for key in summary)  # per-question lists stay internal
    assert summary["heldout_dropped_warmstart"] == summary["heldout_dropped_rl"] == {}  # nothing broke here
    assert summary["heldout_questions"] == 6 and summary["teacher_tool_call_rate"] == 1.0
    assert summary["weights_version"] == 3  # the warm start's push, then two RL steps
    assert summary["heldout_by_task"] == {"synthetic_tables": {
        "questions": 6, "teacher": summary["teacher_accuracy"], "warmstart": summary["heldout_accuracy_warmstart"],
        "rl": summary["heldout_accuracy_rl"]}}
    warm = [json.loads(line) for line in (run / "warmstart.jsonl").read_text().splitlines()]
    assert [r["step"] for r in warm] == [0, 1, 2] and warm[-1]["warmstart/loss"] < warm[0]["warmstart/loss"]
    assert all(documented(name) for r in warm for name in r if name != "step")
    assert "heldout_accuracy_rl" in out
    rl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rl[0]["loss/kl"] < 1e-6  # the KL reference is the warm-started policy, not the initial one
    # the warm-started model, as a folder `vlrl eval --compare` can read beside RL's: the KL reference's weights
    from transformers import AutoModelForImageTextToText

    saved = AutoModelForImageTextToText.from_pretrained(run / "warmstart" / "model", dtype=torch.float32).state_dict()
    reference = torch.load(run / "checkpoints" / "reference.pt")
    assert saved.keys() == reference.keys() and all(torch.equal(saved[k], reference[k]) for k in saved)
    assert (run / "warmstart" / "model" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_ppo_with_a_critic_trains_and_resumes(train_config, tmp_path):
    overrides = ["algo.name=ppo", "rollout.group_size=1", "rollout.prompts_per_step=3", "algo.critic.lr=1.0e-3"]
    vlrl("train", str(train_config), *overrides)
    whole = (tmp_path / "runs" / "latest").resolve()
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss/value_loss"] > 0 and r["loss/grad_norm"] > 0 for r in records)
    assert records[-1]["loss/value_loss"] < records[0]["loss/value_loss"]  # the critic learns the rewards' scale
    vlrl("train", str(train_config), *overrides, f"resume={whole / 'checkpoints' / 'step-1'}")
    resumed = (tmp_path / "runs" / "latest").resolve()
    a, b = weights(whole, 3), weights(resumed, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)


BAD_TOOL = textwrap.dedent('''
    import random
    import time
    from typing import Annotated, Any

    from PIL import Image

    from vlrl.tool import Metadata, tool


    @tool
    def focus_on_x_values_with_mask(image: Image.Image, x_values_to_focus_on: list[str],
                                    all_x_values_bounding_boxes: Annotated[Any, Metadata("x_values_bbox")]
                                    ) -> Image.Image:
        """Hide every bar but the named ones (this copy hangs half the time, and always explodes).

        Args:
            image: the chart.
            x_values_to_focus_on: the bars to keep.
        """
        if random.random() < 0.5:
            time.sleep(30)
        raise RuntimeError("the tool exploded")
''')


@pytest.mark.slow
def test_a_run_whose_tool_crashes_and_hangs_keeps_going_and_counts_it(tmp_path):
    """The warm start teaches the model to call the tool (short JSON calls, learnt reliably in 40
    steps); the tool then fails every time, and RL goes on."""
    vlrl("model", "tiny", "--out", str(tmp_path / "tiny"), "--max-pixels", "12544")
    (tmp_path / "bad_tools.py").write_text(BAD_TOOL)
    path = tmp_path / "crash.yaml"
    path.write_text(textwrap.dedent(f"""
        name: crash
        model: {{path: {tmp_path / 'tiny'}}}
        env: {{tools: ["{tmp_path / 'bad_tools.py'}"], action_formats: [json], max_turns: 2,
               sandbox: {{workers: 2, timeout_s: 1.0}}}}
        task: {{name: synthetic_charts, args: {{kinds: [v_bar], families: [comparison], difficulty: easy,
                                                labels: letters}}}}
        rollout: {{prompts_per_step: 4, group_size: 2, max_new_tokens: 128, temperature: 0.3}}
        warmstart: {{agent: teacher, agent_args: {{p_tool: 1.0, p_correct: 1.0, brief: true}}, samples: 32, steps: 40,
                    batch_size: 16, lr: 3.0e-3}}
        steps: 2
        log: {{dir: {tmp_path / 'runs'}, progress: false}}
    """))
    vlrl("train", str(path))
    records = [json.loads(line) for line in (tmp_path / "runs" / "latest" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(r["rollout/tool_call_rate"] > 0.5 and r["rollout/tool_error_rate"] == 1.0 for r in records)
    assert sum(r["rollout/sandbox_restarts"] for r in records) > 0  # the hangs were cut by the timeout
    assert all(r["rollout/trajectories"] == 8 and not r["rollout/dropped"] for r in records)  # every one kept


@pytest.mark.slow
def test_lora_trains_adapters_serves_merged_weights_and_resumes(train_config, tmp_path, tiny_dir):
    lora = ["optim.lora_rank=4", "optim.lr=1.0e-2"]
    vlrl("train", str(train_config), *lora)
    whole = (tmp_path / "runs" / "latest").resolve()
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss/parity"] < 1e-3 for r in records)  # the engine samples with the merged adapters
    initial, final = load_file(tiny_dir / "model.safetensors"), weights(whole, 3)
    changed = {k for k in final if not torch.equal(initial[k], final[k])}
    assert changed and all(k.endswith("_proj.weight") and "visual" not in k for k in changed)
    assert (whole / "checkpoints" / "step-3" / "adapter" / "adapter_model.safetensors").is_file()
    vlrl("train", str(train_config), *lora, f"resume={whole / 'checkpoints' / 'step-1'}")
    resumed = weights((tmp_path / "runs" / "latest").resolve(), 3)
    assert all(torch.equal(final[k], resumed[k]) for k in final)


@pytest.mark.slow
def test_several_updates_per_rollout_use_the_rollouts_old_policy(train_config, tmp_path):
    vlrl("train", str(train_config), "algo.epochs=2", "algo.mini_batches=3", "steps=2", "checkpoint_every=0")
    run = (tmp_path / "runs" / "latest").resolve()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss/optimizer_steps"] == 6 and r["loss/parity"] < 1e-3 for r in records)
    # after the first update the policy has moved away from pi_old: the mean ratio is no longer exactly 1
    assert all(abs(r["loss/ratio"] - 1) > 1e-6 for r in records)

