"""The install routes resolve: the GPU extra against its vLLM release, the CPU set against the ranges.

`uv pip compile` for a named platform reads the packages' metadata from PyPI and downloads no wheel (pip's
dry run fetches vLLM's 336 MB wheel), so a CUDA install is checked on this CPU machine in seconds."""

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from uv import find_uv_bin

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ("--python-platform", "x86_64-manylinux_2_28", "--python-version", "3.11")


def _resolve(*args: str) -> dict[str, str]:
    out = subprocess.run([find_uv_bin(), "pip", "compile", str(ROOT / "pyproject.toml"), *PLATFORM, "--no-header",
                          "--quiet", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", out.stdout, flags=re.M))


def _pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), flags=re.M))


@pytest.mark.slow
def test_the_gpu_extra_resolves_to_its_vllm_release_and_the_torch_it_was_built_for():
    pins = _resolve("--extra", "gpu")
    assert pins["vllm"] == "0.33.0"
    assert (pins["torch"], pins["torchvision"]) == ("2.14.0", "0.29.0")  # vLLM 0.33.0's exact pins
    assert pins["transformers"].startswith("5.") and 16 <= int(pins["transformers"].split(".")[1]) < 21


@pytest.mark.slow
def test_the_cpu_constraints_resolve_and_are_what_the_suite_runs_on():
    constraints = ROOT / "constraints" / "cpu.txt"
    pins = _resolve("--extra", "dev", "--constraint", str(constraints))
    wanted = _pins(constraints)
    assert set(wanted) == {"torch", "torchvision", "transformers"}
    assert {name: pins[name] for name in wanted} == wanted
    assert {name: metadata.version(name) for name in wanted} == wanted
