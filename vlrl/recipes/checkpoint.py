"""Checkpoints that resume bit for bit: weights, optimizer, LR schedule, RNG states, data cursor, history.

``checkpoints/step-K/model/`` is a complete model folder (weights in safetensors plus the
tokenizer, processor and chat template files of the model the run started from), so a
checkpoint can be served or evaluated like any model; ``state.pt`` holds the rest.
A run resumed from step K with the same config ends with the same weights as a run that
never stopped (HF engine, fp32): sampling seeds depend only on (seed, step, trajectory).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from vlrl.algos.units import Algorithm
from vlrl.trainer.policy import PolicyTrainer

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass
class RunState:
    """Where a run is: the next step to run and how many task samples it has consumed."""

    step: int = 0
    cursor: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)  # trajectories in flight between steps (overlap scheduler)
    summary: dict[str, Any] = field(default_factory=dict)  # figures measured before RL (warm start, held-out)


def save_checkpoint(folder: Path, trainer: PolicyTrainer, state: RunState, model_dir: Path,
                    algo: Algorithm | None = None) -> Path:
    """Write ``folder`` (replacing it) and return it."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "model").mkdir(parents=True)
    for f in Path(model_dir).iterdir():  # tokenizer, processor, chat template: the folder stays a model
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name != "model.safetensors.index.json":
            shutil.copy2(f, tmp / "model" / f.name)
    weights, optimizer = trainer.weights(), trainer.optimizer_state()  # sharded: gathered from every rank
    if isinstance(trainer.model, PeftModel):  # the adapter to resume from, the merged model to serve
        trainer.model.save_pretrained(tmp / "adapter")
        trainer.model.get_base_model().save_pretrained(tmp / "model", state_dict=weights)
    else:
        trainer.model.save_pretrained(tmp / "model", state_dict=weights)
    torch.save({
        "optimizer": optimizer,
        "scheduler": trainer.scheduler.state_dict(),
        "version": trainer.version,
        "step": state.step, "cursor": state.cursor, "history": state.history, "pending": state.pending,
        "summary": state.summary,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
        "algo": None if algo is None else algo.state(),  # the algorithm's own models (PPO's critic)
    }, tmp / "state.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_checkpoint(folder: str | Path, trainer: PolicyTrainer, algo: Algorithm | None = None) -> RunState:
    """Restore ``trainer`` from ``folder``; returns where the run was."""
    folder = Path(folder)
    if not (folder / "state.pt").is_file() or not (folder / "model").is_dir():
        raise FileNotFoundError(f"{folder} is not a vlrl checkpoint (no state.pt and model/)")
    if isinstance(trainer.model, PeftModel):
        if not (folder / "adapter").is_dir():
            raise ValueError(f"{folder}: the run trains LoRA adapters but the checkpoint has none")
        set_peft_model_state_dict(trainer.model, load_file(folder / "adapter" / "adapter_model.safetensors"))
    else:  # through from_pretrained: it maps the saved key names to the in-memory ones
        saved_model = type(trainer.model).from_pretrained(folder / "model", dtype=trainer.model.dtype)
        trainer.model.load_state_dict(saved_model.state_dict())
    saved = torch.load(folder / "state.pt", weights_only=False)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    trainer.version = saved["version"]
    if algo is not None:
        algo.load_state(saved.get("algo"), str(folder))
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    return RunState(saved["step"], saved["cursor"], saved["history"], saved["pending"], saved["summary"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The run's complete checkpoint of the highest step, or None if it wrote none."""
    steps = [(int(p.name.removeprefix("step-")), p) for p in (run_dir / "checkpoints").glob("step-*")
             if p.name.removeprefix("step-").isdigit() and (p / "state.pt").is_file()]
    return max(steps)[1] if steps else None
