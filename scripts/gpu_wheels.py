"""The wheels `scripts/gpu_check.sh` takes to a GPU machine that has no network.

The GPU machines that can be had carry PyTorch (with torchvision), transformers, peft, accelerate, matplotlib
and pillow, and no vLLM, Ray or datasets; what travels with the working tree is at most 64 MiB. So the check
runs the HF engine and the trainer on the machine's own torch, and takes along the rest of what that path
imports: transformers at the version the suite runs on (constraints/cpu.txt), peft, the CLI's small packages,
and qwen-vl-utils without its video decoder (av: 35 MB, images never use it). The closure is resolved for the
target Python with `uv pip compile` (metadata only); what the machine's torch brings is left out.

    python scripts/gpu_wheels.py --out build/gpu-wheels          # download (network), write requirements.txt
    python scripts/gpu_wheels.py --list                          # print the pins, download nothing
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from uv import find_uv_bin

ROOT = Path(__file__).resolve().parents[1]
# on the check's path; Ray, datasets / pyarrow, wandb and vLLM are not (see tests/test_gpu_check.py)
WANTED = ["peft>=0.13", "tokenizers>=0.23.2", "safetensors>=0.6.2", "pyyaml>=6", "jinja2>=3.1", "psutil>=5.9",
          "tqdm>=4.66", "rich>=13", "setuptools>=68"]
WITHOUT_DEPS = ["qwen-vl-utils>=0.0.14"]  # smart_resize only; its av / requests serve videos and URLs
ON_THE_MACHINE = re.compile(r"^(torch|torchvision|triton|numpy|pillow|matplotlib|accelerate|sympy|mpmath|networkx"
                            r"|nvidia-.*|cuda-.*)$")
PLATFORM = "x86_64-manylinux_2_28"


def pins(python_version: str) -> list[str]:
    """``name==version`` for every wheel to take, resolved for ``python_version`` on x86-64 Linux."""
    transformers = re.search(r"^transformers==\S+", (ROOT / "constraints" / "cpu.txt").read_text(), flags=re.M)
    assert transformers is not None, "constraints/cpu.txt pins transformers"
    with tempfile.TemporaryDirectory() as tmp:
        wanted = Path(tmp) / "wanted.in"
        wanted.write_text("\n".join([transformers.group(0), *WANTED]) + "\n")
        out = subprocess.run([find_uv_bin(), "pip", "compile", str(wanted), "--python-platform", PLATFORM,
                              "--python-version", python_version, "--no-header", "--quiet", "--no-annotate"],
                             capture_output=True, text=True, check=True).stdout
    closure = [line.strip() for line in out.splitlines() if "==" in line]
    kept = [p for p in closure if not ON_THE_MACHINE.match(p.split("==")[0].lower())]
    extra = subprocess.run([find_uv_bin(), "pip", "compile", "-", "--python-platform", PLATFORM, "--python-version",
                            python_version, "--no-header", "--quiet", "--no-annotate", "--no-deps"],
                           input="\n".join(WITHOUT_DEPS), capture_output=True, text=True, check=True).stdout
    return kept + [line.strip() for line in extra.splitlines() if "==" in line]


def download(requirements: list[str], python_version: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    abi = "cp" + python_version.replace(".", "")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
                    "--abi", "none", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(out), *requirements],
                   check=True)
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-wheels")
    parser.add_argument("--list", action="store_true", help="print the pins and download nothing")
    args = parser.parse_args()
    requirements = pins(args.python_version)
    if args.list:
        print("\n".join(requirements))
        return
    download(requirements, args.python_version, args.out)
    size = sum(f.stat().st_size for f in args.out.glob("*.whl")) / 2**20
    print(f"{len(requirements)} wheels for Python {args.python_version} in {args.out} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
