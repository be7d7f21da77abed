"""A run's directory: the resolved config, metrics.jsonl, curves, transcripts, and Weights & Biases.

``runs/NAME-YYYYmmdd-HHMMSS/`` holds ``config.yaml``, one ``metrics.jsonl`` line per step (and one
``lengths.jsonl`` line: each trained trajectory's prompt, turn and observation tokens, and its id),
``reward.png`` / ``accuracy.png`` rewritten as the run goes, ``transcripts/step-K/`` (each
trajectory as Markdown with its images, decoded from the very ids that were trained),
``checkpoints/`` and ``summary.json``; ``runs/latest`` points at the newest run. W&B logs
the same figures when ``log.wandb`` is ``offline`` (the default for tracking here: files
in the run directory, ``wandb sync`` later) or ``online``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlrl.types import Trajectory

CURVES = {"reward.png": ("reward/mean", "reward (mean over the step's sampled trajectories)"),
          "accuracy.png": ("reward/accuracy", "accuracy (mean over the step's sampled trajectories)")}
SMOOTH = 10  # steps in the running mean drawn over the per-step values
MARK_COLOURS = ("#7f7f7f", "#d62728", "#2ca02c", "#9467bd")


class RunDir:
    """Everything a run writes goes through here."""

    def __init__(self, path: Path, config: dict[str, Any], wandb_mode: str = "disabled", project: str = "vlrl"):
        self.path = path
        self.history: list[dict[str, Any]] = []
        self._wandb = None
        if wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(project=project, name=path.name, dir=str(path), config=config, mode=wandb_mode)

    @classmethod
    def create(cls, root: str | Path, name: str, config: dict[str, Any], wandb_mode: str = "disabled",
               project: str = "vlrl") -> RunDir:
        """A new ``root/NAME-TIME/`` with ``config.yaml``; ``root/latest`` points at it."""
        root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = root / f"{name}-{stamp}"
        k = 1
        while path.exists():
            path, k = root / f"{name}-{stamp}-{k}", k + 1
        path.mkdir(parents=True)
        (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        latest = root / "latest"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(path.name)
        return cls(path, config, wandb_mode, project)

    def log(self, step: int, metrics: dict[str, Any], phase: str = "rl") -> None:
        """One step's figures (``vlrl.metrics``' names): RL steps go to metrics.jsonl (and the curves), others to
        PHASE.jsonl; W&B gets the numeric ones under the same names."""
        record = {"step": step, **metrics}
        if phase == "rl":
            self.history.append(record)
        path = self.path / ("metrics.jsonl" if phase == "rl" else f"{phase}.jsonl")
        try:
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: say where, not only why
            raise OSError(e.errno, f"{path} could not be written ({e.strerror or e})") from e
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    def plot(self, marks: dict[str, float] | None = None) -> None:
        """Rewrite the curves from the history so far: each step's value and its running mean
        over ``SMOOTH`` steps; ``marks`` (name -> accuracy, e.g. held-out figures) are drawn as
        labelled horizontal lines on the accuracy curve."""
        steps = [r["step"] for r in self.history]
        for filename, (key, title) in CURVES.items():
            points = [(s, r[key]) for s, r in zip(steps, self.history) if r.get(key) is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            fig = Figure(figsize=(6, 3.6), dpi=100)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=0.6, alpha=0.45, label="per step")
            window = [statistics.fmean(ys[max(0, k - SMOOTH + 1): k + 1]) for k in range(len(ys))]
            ax.plot(xs, window, linewidth=2, label=f"mean of the last {SMOOTH} steps")
            for (name, value), colour in zip((marks or {}).items() if filename == "accuracy.png" else (), MARK_COLOURS):
                ax.axhline(value, color=colour, linestyle="--", linewidth=1.2, label=f"{name}: {value:.1%}")
            ax.set_xlabel("step")
            ax.set_title(title)
            ax.grid(color="#dddddd")
            ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            fig.savefig(self.path / filename)

    def transcripts(self, step: int, trajectories: Sequence[Trajectory], tokenizer: Any, limit: int = 4) -> Path:
        folder = self.path / "transcripts" / f"step-{step}"
        for traj in trajectories[:limit]:
            write_trajectory(traj, tokenizer, folder / traj.id.replace("/", "_"))
        return folder

    def finish(self, summary: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2))
        if self._wandb is not None:
            self._wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            self._wandb.finish()


def read_log(run: Path, name: str = "metrics") -> list[dict[str, Any]]:
    """A run directory's ``name``.jsonl as a list of records: metrics, lengths, ... (as ``RunDir.log`` writes them,
    a record per step) or heldout (a record per held-out question)."""
    return [json.loads(line) for line in (Path(run) / f"{name}.jsonl").read_text().splitlines()]


def write_trajectory(traj: Trajectory, tokenizer: Any, folder: Path) -> None:
    """transcript.md: every segment decoded from its ids (image runs shown as their image), plus image_K.png."""
    folder.mkdir(parents=True, exist_ok=True)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    lines, k = [f"# {traj.id} (sample {traj.sample_id})", ""], 0
    for segment in traj.segments:
        text = tokenizer.decode([t for t in segment.token_ids if t != pad], skip_special_tokens=False)
        lines += [f"## {segment.kind}", "", "```text", text, "```", ""]
        for image in segment.images:
            k += 1
            image.save(folder / f"image_{k}.png")
            lines += [f"![image_{k}](image_{k}.png)", ""]
    lines.append(f"**finish:** {traj.finish_reason} · **answer:** {traj.answer!r} · **reward:** {traj.reward} "
                 f"{traj.reward_parts} · **tools:** {traj.tool_stats()}")
    (folder / "transcript.md").write_text("\n".join(lines) + "\n")
