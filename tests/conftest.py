"""Shared fixtures: one tiny model folder, one event loop, engines started once per session."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest
import torch

from vlrl.allocator import keep_freed_memory

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
keep_freed_memory()  # as the vlrl command does (vlrl/allocator.py)



@pytest.fixture(scope="session")
def realdata() -> Path:
    """Real ChartQA / WikiTableQuestions samples: ../shared/realdata beside the clone (as in CI)."""
    folder = Path(os.environ.get("VLRL_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
    if not folder.is_dir():
        raise FileNotFoundError(f"real test data not found at {folder}: clone beside shared/ or set VLRL_REALDATA")
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlrl.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-vlm", seed=0)


@pytest.fixture(scope="session")
def loop():
    """One loop for the session, so engines started once can serve every test."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def run(loop):
    return loop.run_until_complete


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def vision(tiny_dir):
    from vlrl.vision import VisionInputs

    return VisionInputs(tiny_dir)


@pytest.fixture(scope="session")
def trainer_model(tiny_dir):
    """The trainer's own copy of the model, loaded separately from any engine."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_engine(tiny_dir, loop):
    from vlrl.engines.hf import HFEngine

    engine = HFEngine(tiny_dir)
    yield engine
    loop.run_until_complete(engine.close())


@pytest.fixture(scope="session")
def vllm_engine(tiny_dir, loop):
    from vlrl.engines.vllm import VLLMEngine

    engine = loop.run_until_complete(VLLMEngine.create(tiny_dir))
    yield engine
    loop.run_until_complete(engine.close())


REWARD = textwrap.dedent('''
    from vlrl.types import Score

    def distinct_characters(text, answers):
        """A reward every random model gets partly: how varied its answer is."""
        value = min(len(set(text)) / 40, 1.0)
        return Score(value, {"accuracy": value})
''')


def write_train_config(folder: Path, tiny_dir: Path) -> Path:
    """``folder/train.yaml``: a short `vlrl train` config on the tiny model (3 steps of 2 groups of 3, no tools),
    with a reward every random model gets partly (``folder/reward.py``)."""
    (folder / "reward.py").write_text(REWARD)
    path = folder / "train.yaml"
    path.write_text(textwrap.dedent(f"""
        name: e2e
        model: {{path: {tiny_dir}}}
        env: {{tools: [], max_turns: 1, sandbox: {{workers: 1}}}}
        task: {{name: synthetic_charts, args: {{kinds: [v_bar], difficulty: easy}},
                reward: "{folder / 'reward.py'}:distinct_characters"}}
        rollout: {{prompts_per_step: 2, group_size: 3, max_new_tokens: 8}}
        optim: {{lr: 1.0e-3}}
        steps: 3
        checkpoint_every: 1
        log: {{dir: {folder / 'runs'}, transcripts_every: 2, progress: false}}
    """))
    return path


@pytest.fixture
def train_config(tmp_path, tiny_dir) -> Path:
    return write_train_config(tmp_path, tiny_dir)
