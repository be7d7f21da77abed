"""`vlrl bench train`: one GRPO step on the tiny model, phase by phase.

The workload: 8 synthetic charts x 8 trajectories, the focus tools in code format, up to
2 turns of 32 new tokens, the HF engine, fp32. The first step warms caches up; the
figures are the second step's, read from the run's own metrics.jsonl, so the benchmark
measures exactly what `vlrl train` does.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

from vlrl.config import TrainConfig, load_config
from vlrl.recipes.train import train
from vlrl.runlog import read_log

WORKLOAD = [
    "env.tools=[chart_table_focus]", "env.action_formats=[code]", "env.max_turns=2", "env.sandbox.workers=2",
    "task.name=synthetic_charts", "task.args={kinds: [v_bar], difficulty: easy, labels: letters}",
    "rollout.prompts_per_step=8", "rollout.group_size=8", "rollout.max_new_tokens=32",
    "steps=2", "log.progress=false", "log.transcripts_every=0", "log.plots_every=0",
]
KEYS = {"perf/step_s": "step", "perf/rollout_s": "rollout (decode + tools)", "perf/reward_s": "reward",
        "perf/forward_s": "logprob forward", "perf/update_s": "update (forward + backward + AdamW)",
        "perf/sync_s": "weight sync"}


def measure(model_dir: Path, engine: str, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The per-step metrics of `vlrl train` on the workload (with ``overrides``)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(TrainConfig, None, [*WORKLOAD, f"model.path={model_dir}", f"engine.kind={engine}",
                                              f"log.dir={tmp}", *overrides])
        run = asyncio.run(train(cfg))
        return read_log(run)


def run(model_dir: Path, engine: str, as_json: bool) -> dict[str, float]:
    last = measure(model_dir, engine)[-1]
    print(f"one GRPO step ({engine} engine, 8 prompts x 8 trajectories, {last['rollout/trajectories']} trajectories, "
          f"{last['loss/policy_tokens']:.0f} policy tokens)")
    for key, label in KEYS.items():
        print(f"  {label:38s} {last[key]:7.2f} s")
    print(f"  {'tokens/s (generation)':38s} {last['perf/tokens_per_s']:7.0f}")
    figures = {k: round(float(last[f"perf/{k}"]), 3) for k in ("step_s", "rollout_s", "update_s", "sync_s",
                                                                "tokens_per_s")}
    if as_json:
        print(json.dumps(figures))
    return figures
