"""The recipes in configs/ hold the settings they claim (test_config loads every shipped file); the CPU one runs."""

from __future__ import annotations

import json

import pytest

from test_cli import ROOT, vlrl
from vlrl.config import TrainConfig, load_config


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
