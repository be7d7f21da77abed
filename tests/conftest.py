"""Shared fixtures: one tiny model folder, one event loop, engines started once per session."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")



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
