"""Checkpoints that resume bit for bit: weights, optimizer, LR schedule, RNG states, data cursor, history.

``checkpoints/step-K/model/`` is a complete model folder (weights in safetensors plus the
tokenizer, processor and chat template files of the model the run started from), so a
checkpoint can be served or evaluated like any model; ``state.pt`` holds the rest, and
``reference.pt`` the KL reference once a warm start has made it other than the model the
run loaded (written once per run, ``checkpoints/reference.pt``, and hard-linked into each
checkpoint). A run resumed from step K with the same config ends with the same weights as
a run that never stopped (HF engine, fp32): sampling seeds depend only on (seed, step,
trajectory).

A checkpoint is written under ``step-K.tmp`` and renamed when whole; its last file,
``complete.json``, lists every file's size. A folder without it, or whose files are not
those sizes, is not a checkpoint (``check_checkpoint`` says why); ``latest_checkpoint``
passes over it to the one before, and ``resume=auto`` starts from what that finds.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from vlrl.algos.units import Algorithm
from vlrl.trainer.policy import PolicyTrainer

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
MANIFEST = "complete.json"  # written last: {relative path: bytes} of every other file
REFERENCE = "reference.pt"  # the KL reference's weights, when a warm start reset it


class BadCheckpoint(ValueError):
    """A folder that is not a whole vlrl checkpoint (torn by a kill mid-write, truncated, or not one at all)."""


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
    """Write ``folder`` (replacing it) and return it. A write that fails (a full disk) leaves no partial folder and
    raises OSError naming the checkpoint, the reason, the space left there and the newest checkpoint still whole."""
    weights, optimizer = trainer.weights(), trainer.optimizer_state()  # sharded: gathered from every rank
    saved = {
        "optimizer": optimizer,
        "scheduler": trainer.scheduler.state_dict(),
        "version": trainer.version,
        "step": state.step, "cursor": state.cursor, "history": state.history, "pending": state.pending,
        "summary": state.summary,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
        "algo": None if algo is None else algo.state(),  # the algorithm's own models (PPO's critic)
    }
    tmp = folder.with_name(folder.name + ".tmp")
    try:
        _write_checkpoint(tmp, trainer, weights, saved, model_dir)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {str(e).splitlines()[0]}"
        free = shutil.disk_usage(folder.parent).free / 2**20
        kept = next(whole_checkpoints(folder.parent.parent), None)
        raise OSError(getattr(e, "errno", None) or errno.EIO,
                      f"checkpoint {folder} could not be written ({why}; {free:.1f} MiB free there); "
                      f"{f'{kept} is the newest one, intact' if kept else 'the run has no earlier one'}") from e
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _write_checkpoint(tmp: Path, trainer: PolicyTrainer, weights: dict[str, torch.Tensor], saved: dict[str, Any],
                      model_dir: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(trainer.model, PeftModel):  # the adapter to resume from (beside the merged model to serve)
        trainer.model.save_pretrained(tmp / "adapter")
    save_model_folder(tmp / "model", trainer, weights, model_dir)
    torch.save(saved, tmp / "state.pt")
    reference = tmp.parent / REFERENCE
    if reference.is_file():
        _link_or_copy(reference, tmp / REFERENCE)
    sizes = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
    (tmp / MANIFEST).write_text(json.dumps(sizes, indent=1))


def save_model_folder(target: Path, trainer: PolicyTrainer, weights: dict[str, torch.Tensor], model_dir: Path) -> Path:
    """``weights`` as a model folder any engine loads: the run's model folder's tokenizer, processor and chat
    template beside them (a LoRA model's weights merged into its base's)."""
    target.mkdir(parents=True)
    for f in Path(model_dir).iterdir():  # tokenizer, processor, chat template: the folder stays a model
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name != "model.safetensors.index.json":
            shutil.copy2(f, target / f.name)
    model = trainer.model.get_base_model() if isinstance(trainer.model, PeftModel) else trainer.model
    model.save_pretrained(target, state_dict=weights)
    return target


def save_reference(checkpoints: Path, weights: dict[str, torch.Tensor]) -> Path:
    """``checkpoints/reference.pt``: the KL reference's weights (as ``PolicyTrainer.weights`` gives them), which every
    later checkpoint of the run links to."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = checkpoints / (REFERENCE + ".tmp")
    torch.save(weights, tmp)
    tmp.replace(checkpoints / REFERENCE)
    return checkpoints / REFERENCE


def adopt_reference(checkpoint: Path, checkpoints: Path) -> None:
    """A run resumed from ``checkpoint`` keeps its reference for its own checkpoints (in ``checkpoints``)."""
    if (Path(checkpoint) / REFERENCE).is_file():
        checkpoints.mkdir(parents=True, exist_ok=True)
        _link_or_copy(Path(checkpoint) / REFERENCE, checkpoints / REFERENCE)


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` holding ``source``'s bytes: a hard link where the file system allows one (no second copy)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def check_checkpoint(folder: Path) -> None:
    """BadCheckpoint, saying why, unless ``folder`` is a whole checkpoint."""
    manifest = folder / MANIFEST
    if not folder.is_dir() or not manifest.is_file():
        raise BadCheckpoint(f"{folder} is not a vlrl checkpoint (no {MANIFEST}: not one, or its writing was cut off)")
    try:
        sizes = json.loads(manifest.read_text())
    except ValueError as e:
        raise BadCheckpoint(f"{folder}: {MANIFEST} does not parse ({e})") from e
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            raise BadCheckpoint(f"{folder}: {name} is missing")
        if path.stat().st_size != size:
            raise BadCheckpoint(f"{folder}: {name} has {path.stat().st_size} bytes, {size} were written")


def load_checkpoint(folder: str | Path, trainer: PolicyTrainer, algo: Algorithm | None = None) -> RunState:
    """Restore ``trainer`` from ``folder``; returns where the run was."""
    folder = Path(folder)
    check_checkpoint(folder)
    try:
        saved = torch.load(folder / "state.pt", weights_only=False)
        reference = torch.load(folder / REFERENCE, weights_only=True) if (folder / REFERENCE).is_file() else None
    except Exception as e:  # a file of the right size whose bytes were changed
        raise BadCheckpoint(f"{folder}: does not load ({type(e).__name__}: {e})") from e
    if isinstance(trainer.model, PeftModel):
        if not (folder / "adapter").is_dir():
            raise ValueError(f"{folder}: the run trains LoRA adapters but the checkpoint has none")
        set_peft_model_state_dict(trainer.model, load_file(folder / "adapter" / "adapter_model.safetensors"))
    else:  # through from_pretrained: it maps the saved key names to the in-memory ones
        saved_model = type(trainer.model).from_pretrained(folder / "model", dtype=trainer.model.dtype)
        trainer.model.load_state_dict(saved_model.state_dict())
    if reference is not None and trainer.reference is not None:  # without KL now, the reference is not needed
        trainer.reference.load_state_dict(reference)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    trainer.version = saved["version"]
    if algo is not None:
        algo.load_state(saved.get("algo"), str(folder))
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    return RunState(saved["step"], saved["cursor"], saved["history"], saved["pending"], saved["summary"])


def whole_checkpoints(run_dir: Path) -> Iterator[Path]:
    """The run's whole checkpoints, the highest step first; one that is not whole is passed over (said on stderr)."""
    steps = sorted(((int(p.name.removeprefix("step-")), p) for p in (run_dir / "checkpoints").glob("step-*")
                    if p.name.removeprefix("step-").isdigit()), reverse=True)
    for _, folder in steps:
        try:
            check_checkpoint(folder)
        except BadCheckpoint as e:
            print(f"vlrl: passing over {e}", file=sys.stderr)
            continue
        yield folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The run's whole checkpoint of the highest step, or None if it wrote none."""
    return next(whole_checkpoints(run_dir), None)


def auto_checkpoints(root: Path, name: str) -> Iterator[Path]:
    """``resume=auto``'s candidates: the whole checkpoints of the runs named ``name`` under ``root``, the newest run
    first, each run's highest step first (a resumed run's are newer than those of the run it resumed)."""
    stamped = re.compile(re.escape(name) + r"-(\d{8}-\d{6})(?:-(\d+))?")
    runs = [(m.group(1), int(m.group(2) or 0), p) for p in root.glob(f"{name}-*")
            if (m := stamped.fullmatch(p.name)) and p.is_dir() and not p.is_symlink()]
    for *_, run_dir in sorted(runs, reverse=True):
        yield from whole_checkpoints(run_dir)
