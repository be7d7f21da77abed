"""The recipes in configs/ hold the settings they claim (test_config loads every shipped file); the CPU one runs."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from test_cli import ROOT, vlrl
from vlrl.config import TrainConfig, load_config
from vlrl.recipes.parts import build, start


def test_the_vtool_r1_setting():
    for name in ("chartqa_grpo.yaml", "tablevqa_grpo.yaml"):
        cfg = load_config(TrainConfig, ROOT / "configs" / name)
        assert (cfg.rollout.group_size, cfg.rollout.temperature, cfg.rollout.top_p) == (5, 1.0, 0.99)
        assert (cfg.optim.lr, cfg.algo.loss.kl_coef, cfg.algo.loss.clip_low) == (1e-6, 0.01, 0.2)
        assert cfg.engine.kind == "vllm" and cfg.env.action_formats == ["code"]


@pytest.mark.slow
def test_the_ppo_recipe_runs_on_the_tiny_model(tiny_dir, tmp_path):
    vlrl("train", "configs/ppo_critic.yaml", f"model.path={tiny_dir}", "steps=1", "rollout.prompts_per_step=2",
         "rollout.max_new_tokens=8", f"log.dir={tmp_path}", "log.progress=false")
    record = json.loads((tmp_path / "latest" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss/value_loss"] >= 0 and record["perf/version"] == 1


def test_a_cpu_trainer_shares_the_hf_engines_thread_unless_the_engine_decodes_through_the_update(tiny_dir, tmp_path):
    """One OpenMP team for the engine and the trainer, the event loop's torch ops on itself while the run lasts
    (vlrl/worker_thread.py: a second team on the same cores slows every decode step)."""
    everywhere = torch.get_num_threads()

    async def opened(*overrides: str) -> tuple[bool, int]:
        run = build(load_config(TrainConfig, None, [f"model.path={tiny_dir}", f"log.dir={tmp_path}",
                                                    "log.progress=false", *overrides]))
        await start(run)
        try:
            return run.compute is run.engine.worker, torch.get_num_threads()
        finally:
            await run.close()

    assert asyncio.run(opened()) == (True, 1)
    assert torch.get_num_threads() == everywhere  # given back when the run closes
    assert asyncio.run(opened("rollout.schedule=overlap", "rollout.decode_during_update=true")) == (False, everywhere)
