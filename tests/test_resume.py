"""A run killed anywhere resumes to the weights of a run that never stopped, and leaves no process behind.

The config has what the quickstart has and the older resume tests lacked: a warm start on a teacher and a KL
to the warm-started policy (whose reference a resumed run used to rebuild from the loaded model), and the task
rendered in worker processes (which used to outlive a killed run)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import write_train_config
from test_cli import ROOT, VLRL, vlrl
from vlrl.recipes.checkpoint import BadCheckpoint, auto_checkpoints, check_checkpoint, latest_checkpoint

STEPS = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_dir) -> Path:
    """The suite's short config with a warm start, a KL penalty and the task rendered by two workers."""
    path = write_train_config(tmp_path_factory.mktemp("resume"), tiny_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["task"]["args"]["workers"] = 2
    cfg |= {"name": "killed", "steps": STEPS, "algo": {"loss": {"kl_coef": 0.05}},
            "warmstart": {"agent": "teacher", "samples": 12, "steps": 3,
                          "agent_args": {"p_tool": 0.0, "p_correct": 0.5}},
            "log": {"transcripts_every": 0, "progress": False}}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def whole(config, tmp_path_factory) -> Path:
    """The run that never stopped."""
    root = tmp_path_factory.mktemp("whole")
    vlrl("train", str(config), f"log.dir={root}")
    return (root / "latest").resolve()


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{STEPS}" / "model" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_resumed_run_keeps_the_warm_started_kl_reference(config, whole, tmp_path):
    checkpoints = whole / "checkpoints"
    assert all((checkpoints / f"step-{k}" / "reference.pt").stat().st_ino == (checkpoints / "reference.pt").stat().st_ino
               for k in range(1, STEPS + 1))  # one file, linked into every checkpoint
    vlrl("train", str(config), f"log.dir={tmp_path}", f"resume={checkpoints / 'step-1'}")
    assert_same_weights(whole, (tmp_path / "latest").resolve())


def _runs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("killed-*") if p.is_dir())


def _kill_when(config: Path, root: Path, ready, poll_s: float) -> tuple[Path, list[psutil.Process]]:
    """Start `vlrl train ... resume=auto`, SIGKILL it once ``ready(run_dir)`` holds; its run directory and the
    processes it had started."""
    before = set(_runs(root))
    proc = subprocess.Popen([*VLRL, "train", str(config), f"log.dir={root}", "resume=auto"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    run_dir, children = None, []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            run_dir = run_dir or next(iter(set(_runs(root)) - before), None)
            children = psutil.Process(proc.pid).children(recursive=True) or children
            if run_dir is not None and ready(run_dir):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(poll_s)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert run_dir is not None
    return run_dir, children


def _age(path: Path) -> float:
    """Seconds since ``path`` was written (-1: it was not)."""
    return time.time() - path.stat().st_mtime if path.is_file() else -1.0


def _resumed_from(run_dir: Path) -> str:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["resume"]


def test_killed_mid_step_and_mid_checkpoint_it_resumes_to_the_same_weights_and_leaves_no_process(config, whole,
                                                                                                 tmp_path):
    # 1. mid-step: half a second after its first checkpoint, while step 2 decodes or trains
    first, children = _kill_when(config, tmp_path, lambda d: _age(d / "checkpoints" / "step-1" / "complete.json") > 0.5,
                                 0.05)
    assert len(children) >= 2  # the task's two renderers at least
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()[:3]) for p in alive]}"
    # 2. inside a checkpoint write: the moment a step-K.tmp folder appears
    second, _ = _kill_when(config, tmp_path, lambda d: any((d / "checkpoints").glob("step-*.tmp")), 0.002)
    assert _resumed_from(second) == str(latest_checkpoint(first))
    torn = next((second / "checkpoints").glob("step-*.tmp"))
    with pytest.raises(BadCheckpoint, match="no complete.json"):
        check_checkpoint(torn)
    # 3. to the end
    vlrl("train", str(config), f"log.dir={tmp_path}", "resume=auto")
    last = _runs(tmp_path)[-1]
    expected = latest_checkpoint(second) or latest_checkpoint(first)
    assert _resumed_from(last) == str(expected)
    assert_same_weights(whole, last)


def test_a_corrupt_checkpoint_is_named_and_auto_resume_takes_the_one_before(config, whole, tmp_path):
    run = tmp_path / "killed-20261207-120000"
    shutil.copytree(whole, run, symlinks=True)
    checkpoints = run / "checkpoints"
    weights = checkpoints / f"step-{STEPS}" / "model" / "model.safetensors"
    with weights.open("r+b") as f:  # torn: shorter than written
        f.truncate(weights.stat().st_size - 10)
    with pytest.raises(BadCheckpoint, match=r"model/model.safetensors has \d+ bytes, \d+ were written"):
        check_checkpoint(weights.parents[1])
    assert next(auto_checkpoints(tmp_path, "killed")) == checkpoints / f"step-{STEPS - 1}"
    state = checkpoints / f"step-{STEPS - 1}" / "state.pt"
    state.write_bytes(b"\0" * state.stat().st_size)  # the size it was written with, other bytes
    result = vlrl("train", str(config), f"log.dir={tmp_path / 'elsewhere'}", f"resume={state.parent}", check=False)
    assert result.returncode == 2 and f"{state.parent}: does not load" in result.stderr, result.stderr[-2000:]
    result = vlrl("train", str(config), f"log.dir={tmp_path}", "resume=auto")
    assert f"passing over {state.parent}: does not load" in result.stderr
    resumed = _runs(tmp_path)[-1]
    assert _resumed_from(resumed) == str(checkpoints / f"step-{STEPS - 2}")
    assert_same_weights(whole, resumed)
    assert next(auto_checkpoints(tmp_path / "nothing-here", "killed"), None) is None


@pytest.mark.vllm
def test_a_dead_vllm_engine_core_costs_its_step_and_the_run_resumes_with_a_new_one(train_config, tmp_path):
    """The engine core process killed mid-run: the step it was in is not trained, `vlrl train` says what died and
    resumes from the last checkpoint with a new engine (distributed.max_restarts), and the run ends whole."""
    root = tmp_path / "engine-killed"
    proc = subprocess.Popen([*VLRL, "train", str(train_config), "engine.kind=vllm", f"steps={STEPS}",
                             "checkpoint_every=1", f"log.dir={root}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, killed = time.monotonic() + 600, None
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        first = next(iter(sorted(root.glob("e2e-*"))), None)
        if first is not None and (first / "checkpoints" / "step-1" / "complete.json").is_file():
            core = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in " ".join(
                p.cmdline()) or p.name().startswith("VLLM::EngineCor")]
            if core:
                killed = core[0].pid
                core[0].kill()
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert killed is not None and proc.returncode == 0, err[-3000:]
    assert "vLLM's engine core process died" in err and "resuming (1/1)" in err, err[-3000:]
    first, second = sorted(root.glob("e2e-*"))
    resumed_from = _resumed_from(second)
    assert resumed_from.startswith(str(first / "checkpoints" / "step-"))
    at = int(resumed_from.rsplit("-", 1)[1])
    logged = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    # resumed from the checkpoint of the last step logged (or, killed between its log line and its checkpoint, the
    # one before: that step is trained again from the same weights, its first update never kept)
    assert logged[-1] < STEPS - 1 and at in (logged[-1], logged[-1] + 1)
    assert [json.loads(line)["step"] for line in (second / "metrics.jsonl").read_text().splitlines()] == \
        list(range(STEPS))
    assert (second / "checkpoints" / f"step-{STEPS}" / "complete.json").is_file()


@pytest.mark.vllm
def test_a_killed_vllm_run_leaves_none_of_vllms_processes_behind(train_config, tmp_path):
    root = tmp_path / "vllm-killed"
    started = {}

    def after_first_checkpoint(run_dir):
        started["children"] = psutil.Process(proc.pid).children(recursive=True)
        started["names"] = [p.name() for p in started["children"]]
        return (run_dir / "checkpoints" / "step-1" / "complete.json").is_file()

    proc = subprocess.Popen([*VLRL, "train", str(train_config), "engine.kind=vllm", f"log.dir={root}", "steps=4",
                             "checkpoint_every=1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        run_dir = next(iter(root.glob("e2e-*")), None)
        if run_dir is not None and after_first_checkpoint(run_dir):
            proc.kill()
            break
        time.sleep(0.1)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert sum(name.startswith("VLLM::") for name in started["names"]) >= 2, started["names"]  # core and worker
    gone, alive = psutil.wait_procs(started["children"], timeout=15)
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
