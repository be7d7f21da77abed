"""Processes that end with the process that started them, however it ends.

A spawned worker waits on a queue whose write end it holds itself, so when its parent is
killed (SIGKILL: no clean-up runs) nothing ever wakes it: it lives on, re-parented to init.
``die_with`` in a process's start-up ends it (and any others named) within ``POLL_S`` of
the process it serves: the task's renderers watch their parent, vLLM's workers the vlrl
process two levels up (taking their engine core with them).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Sequence

POLL_S = 0.5


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def die_with(pid: int, also: Sequence[int] = ()) -> None:
    """Once ``pid`` is gone, SIGKILL the processes ``also`` names and end this one (exit status 1): for a pool's
    ``initializer`` or the start of a spawned target, given the pid of the process it serves."""

    def watch() -> None:
        while alive(pid):
            time.sleep(POLL_S)
        for other in also:
            try:
                os.kill(other, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(1)

    threading.Thread(target=watch, name="vlrl-lifeline", daemon=True).start()
