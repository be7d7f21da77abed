"""scripts/gpu_check.sh's path runs with only what the GPU machines here carry, and takes the rest along.

The check itself runs on CPU here (`--device cpu --quick`) with the packages those machines lack made
unimportable (tests/gpu_machine/sitecustomize.py), so an import of datasets, Ray, wandb or vLLM added on its path
fails this test before it fails on a GPU machine with no network."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_MACHINE = {"PYTHONPATH": str(ROOT / "tests" / "gpu_machine")}


def _run(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


@pytest.mark.slow
def test_the_gpu_check_runs_without_what_the_gpu_machines_lack(tmp_path):
    absent = _run([sys.executable, "-c", "import datasets"], GPU_MACHINE)
    assert absent.returncode != 0 and "No module named 'datasets'" in absent.stderr
    proc = _run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--out", str(tmp_path)],
                GPU_MACHINE, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failures"] == [] and report["machine"]["device"] == "cpu"
    assert report["parity_float32"]["mean_abs"] < 1e-3 and report["parity_bfloat16"]["mean_abs"] < 2e-2
    assert report["parity_float32"]["mean_abs"] < report["parity_bfloat16"]["mean_abs"]
    assert set(report["parity_float32"]["engine_tokens_per_s"]) == {"1", "4"}
    grpo = report["grpo"]
    assert grpo["steps"] == 2 and all(s > 0 for s in grpo["update_s"]) and grpo["groups"]["trained"] == 4
    assert report["memory"]["vocab"] == 151_936 and report["memory"]["trainer_peak_gb"]["2048"] > 0
    for step in ("model", "parity-float32", "parity-bfloat16", "grpo", "memory"):
        assert (tmp_path / f"{step}.log").stat().st_size > 0


@pytest.mark.slow
def test_the_wheels_taken_along_are_the_small_rest_of_the_path():
    proc = _run([sys.executable, "scripts/gpu_wheels.py", "--list"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    pins = dict(line.split("==") for line in proc.stdout.split())
    constraints = dict(line.split("==") for line in (ROOT / "constraints" / "cpu.txt").read_text().split()
                       if "==" in line)
    assert pins["transformers"] == constraints["transformers"]
    assert {"qwen-vl-utils", "peft", "psutil", "rich", "pyyaml", "tokenizers", "setuptools"} <= set(pins)
    assert not {"torch", "torchvision", "numpy", "av", "datasets", "pyarrow", "ray", "wandb", "vllm"} & set(pins)
    assert not any(name.startswith("nvidia-") for name in pins)


def test_the_check_without_its_wheels_says_how_to_get_them(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "gpu_check.sh").write_bytes((ROOT / "scripts" / "gpu_check.sh").read_bytes())
    proc = _run(["bash", str(tmp_path / "scripts" / "gpu_check.sh")])
    assert proc.returncode == 2 and "run 'bash scripts/gpu_check.sh --prepare' first" in proc.stderr
