#!/usr/bin/env bash
# Issue 24's GPU check on a machine with one GPU and no network, which carries PyTorch (with torchvision),
# transformers, peft and accelerate but not vLLM, Ray or datasets (see scripts/gpu_wheels.py):
#   here, with network, after `make setup`:  bash scripts/gpu_check.sh --prepare   (build/gpu-wheels, ~30 MiB)
#   on the GPU machine, from the repository root with build/gpu-wheels beside it:  bash scripts/gpu_check.sh
# It makes a venv over the machine's own packages, installs the wheels and vlrl into it (no index), then runs
# scripts/gpu_check.py: engine/trainer parity in float32 and bfloat16 on a qwen2.5-vl-7b-shaped model, a few GRPO
# steps, `vlrl bench memory --device cuda`, tokens/s. Figures and logs go to runs/gpu-check; the last line is JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=build/gpu-wheels
if [[ "${1:-}" == "--prepare" ]]; then
  exec .venv/bin/python scripts/gpu_wheels.py --python-version "${GPU_PYTHON_VERSION:-3.12}" --out "$WHEELS"
fi
test -f "$WHEELS/requirements.txt" || { echo "no $WHEELS: run 'bash scripts/gpu_check.sh --prepare' first" >&2; exit 2; }
VENV=build/gpu-venv
python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -c "import torch, torchvision; assert torch.cuda.is_available(), 'no CUDA device'"
"$VENV/bin/pip" install -q --no-index --no-deps --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
"$VENV/bin/pip" install -q --no-index --no-deps --no-build-isolation --ignore-requires-python -e .
exec "$VENV/bin/python" scripts/gpu_check.py --device cuda --out runs/gpu-check "$@"
