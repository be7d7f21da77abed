from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from vlrl.config import ConfigError, EvalConfig, GenerateConfig, TrainConfig, apply_override, load_config
from vlrl.types import SamplingParams

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# every shipped config, with the dataclass that reads it
SHIPPED = {"generate.yaml": GenerateConfig, "quickstart.yaml": TrainConfig, "chartqa_grpo.yaml": TrainConfig,
           "tablevqa_grpo.yaml": TrainConfig, "ppo_critic.yaml": TrainConfig, "eval_quick.yaml": EvalConfig,
           "vtool_r1_chart.yaml": TrainConfig, "vtool_r1_table.yaml": TrainConfig, "close_bars.yaml": TrainConfig}


@dataclass
class Inner:
    lr: float = 1e-5
    steps: int = 10
    kind: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)


@dataclass
class Outer:
    trainer: Inner = field(default_factory=Inner)
    name: str = "run"
    seed: int | None = None


def test_yaml_and_dotted_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("trainer:\n  lr: 0.001\n  tags: [x]\nname: first\n")
    cfg = load_config(Outer, cfg_file, ["trainer.lr=1e-6", "trainer.kind=b", "seed=3"])
    assert cfg.trainer.lr == 1e-6 and isinstance(cfg.trainer.lr, float)
    assert cfg.trainer.kind == "b" and cfg.trainer.tags == ["x"]
    assert cfg.trainer.steps == 10  # default kept
    assert cfg.name == "first" and cfg.seed == 3


def test_numbers_yaml_reads_as_strings_or_ints_are_floats(tmp_path):
    assert load_config(Outer, None, ["trainer.lr=1"]).trainer.lr == 1.0
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("trainer:\n  lr: 3e-4\n")  # YAML 1.1 reads this as a string
    assert load_config(Outer, cfg_file).trainer.lr == 3e-4
    with pytest.raises(ConfigError, match="trainer.lr: expected a number, got str 'fast'"):
        load_config(Outer, None, ["trainer.lr=fast"])


@pytest.mark.parametrize(
    "override, path",
    [
        ("trainer.lrr=1e-6", "trainer.lrr"),
        ("trainr.lr=1e-6", "trainr"),
    ],
)
def test_unknown_key_names_its_path(override, path):
    with pytest.raises(ConfigError, match=f"unknown key '{path}'"):
        load_config(Outer, None, [override])


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trainer.steps=ten", "trainer.steps: expected int, got str 'ten'"),
        ("trainer.steps=1.5", "trainer.steps: expected int"),
        ("trainer.kind=c", "trainer.kind: 'c' is not one of"),
        ("trainer.tags=5", "trainer.tags: expected a list"),
        ("trainer=3", "trainer: expected a mapping"),
        ("trainer.lr=true", "trainer.lr: expected a number"),
    ],
)
def test_wrong_type_names_its_path(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, [override])
    assert needle in str(e.value)


def test_bounds_are_checked_with_the_section_named():
    with pytest.raises(ConfigError, match=r"sampling: top_p must be in \(0, 1\], got 2.0"):
        load_config(GenerateConfig, None, ["sampling.top_p=2"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form"):
        apply_override({}, "no-equals-sign")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_tuple_fields_of_frozen_dataclasses():
    cfg = load_config(GenerateConfig, None, ["sampling.stop=['</answer>']", "sampling.stop_token_ids=[3, 4]"])
    assert cfg.sampling == SamplingParams(stop=("</answer>",), stop_token_ids=(3, 4))


def test_every_shipped_config_loads():
    files = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert files == sorted(SHIPPED), "add new configs to SHIPPED with the class that reads them"
    for name, cls in SHIPPED.items():
        load_config(cls, CONFIGS / name)


def test_overlap_weights_stale_tokens_unless_told_not_to():
    def cap(*overrides: str) -> float | None:
        return load_config(TrainConfig, None, list(overrides)).algo.loss.importance_cap

    assert cap("rollout.schedule=overlap") == 2.0  # deferred tokens come from older weights
    assert cap("rollout.schedule=sync") == cap("rollout.schedule=async") == 0.0
    assert cap("rollout.schedule=overlap", "algo.loss.importance_cap=0") == 0.0
    assert cap("rollout.schedule=sync", "algo.loss.importance_cap=3") == 3.0
