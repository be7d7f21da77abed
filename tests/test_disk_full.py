"""A disk that fills up mid-run: the run stops with a message that says which write failed and which checkpoint is
still whole, and leaves no partial checkpoint. The run's folder is a small tmpfs, the size of one checkpoint and a
half, mounted in a mount namespace of the run's own (unshare, as root: this project's machines run as root, and the
sandbox's per-worker uids need it too)."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from test_cli import ROOT, VLRL

pytestmark = pytest.mark.slow


def test_a_checkpoint_that_does_not_fit_stops_the_run_with_the_last_whole_one_named(train_config, tmp_path, tiny_dir):
    runs = tmp_path / "small-disk"
    runs.mkdir()
    one = sum(f.stat().st_size for f in tiny_dir.iterdir()) * 3  # weights + AdamW's two moments
    train = [*VLRL, "train", str(train_config), f"log.dir={runs}", "checkpoint_every=1", "steps=3"]
    script = f"mount -t tmpfs -o size={int(one * 1.5)} tmpfs {runs} && exec {shlex.join(train)}"
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "checkpoints/step-2 could not be written (" in result.stderr and "MiB free there" in result.stderr
    assert "checkpoints/step-1 is the newest one, intact" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(runs.glob("*/checkpoints/*.tmp"))  # the torn one removed (the mount is gone: the folder is empty)
