"""The metrics contract: one glossary that the docs show, namespaced names, families spread, update figures split."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlrl.metrics import (
    EngineFigures,
    LossFigures,
    PerfFigures,
    RewardFigures,
    RolloutFigures,
    SchedFigures,
    StepRecord,
    VerifierFigures,
    documented,
    glossary,
    update_figures,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_glossary_is_the_generated_one():
    assert (ROOT / "docs" / "metrics.md").read_text() == glossary(), "run: python -m vlrl.metrics > docs/metrics.md"


def test_a_record_flattens_to_namespaced_names_with_families_spread():
    record = StepRecord(RolloutFigures(trajectories=4, finish={"answer": 3, "length": 1}),
                        RewardFigures(mean=0.5, parts={"accuracy": 0.75, "format": 1.0}),
                        SchedFigures(groups_started=2), PerfFigures(step_s=1.5),
                        loss=LossFigures(policy=0.1, terms={"clip_fraction": 0.2}),
                        verifier=VerifierFigures(early_tokens=10, engine={"replica_0_requests": 3}),
                        engine=EngineFigures({"replicas_alive": 2}))
    flat = record.flat()
    assert flat["rollout/trajectories"] == 4 and flat["rollout/finish"] == {"answer": 3, "length": 1}
    assert flat["reward/mean"] == 0.5 and flat["reward/accuracy"] == 0.75 and flat["reward/format"] == 1.0
    assert flat["loss/policy"] == 0.1 and flat["loss/clip_fraction"] == 0.2 and flat["perf/step_s"] == 1.5
    assert flat["verifier/early_tokens"] == 10 and flat["verifier/replica_0_requests"] == 3
    assert flat["engine/replicas_alive"] == 2 and flat["sched/groups_started"] == 2
    assert all("/" in name and documented(name) for name in flat)
    assert "reward/parts" not in flat and "loss/terms" not in flat
    without = StepRecord(RolloutFigures(), None, SchedFigures(), PerfFigures()).flat()
    assert not any(name.startswith(("loss/", "verifier/", "reward/")) for name in without)


def test_a_family_entry_may_not_hide_a_figure():
    with pytest.raises(ValueError, match="reward/mean"):
        RewardFigures(mean=0.5, parts={"mean": 1.0}).flat()


def test_only_documented_names_are_documented():
    assert documented("rollout/tool_call_rate") and documented("reward/anything_a_reward_returns")
    assert not documented("rollout/no_such_figure") and not documented("nowhere/step_s")


def test_an_update_splits_into_the_loss_section_and_the_seconds():
    loss, times = update_figures({"loss": 0.3, "entropy": 1.2, "parity": 1e-4, "grad_norm": 0.9, "lr": 1e-5,
                                  "policy_tokens": 120.0, "forward_s": 0.4, "update_s": 1.1, "clip_fraction": 0.05,
                                  "kl": 0.01, "optimizer_steps": 6, "value_loss": 2.0, "critic_s": 0.3})
    assert (loss.policy, loss.entropy, loss.grad_norm, loss.optimizer_steps) == (0.3, 1.2, 0.9, 6)
    assert loss.terms == {"clip_fraction": 0.05, "kl": 0.01, "value_loss": 2.0}
    assert times == {"forward_s": 0.4, "update_s": 1.1, "critic_s": 0.3}
