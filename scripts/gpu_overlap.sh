#!/usr/bin/env bash
# `vlrl bench overlap` on one GPU with the HF engine: longtail-cot, every schedule, 3 measured steps each
# (the split schedules give the engine's Ray replica half the card). Prints the table and the JSON line, and keeps
# the runs (metrics, timelines) in runs/bench-gpu. Run from the repository root after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
.venv/bin/vlrl bench overlap --device cuda --workload longtail-cot --steps 3 --keep runs/bench-gpu --json
