"""Worker processes that end with the process that started them, however it ends.

A spawned worker waits on a queue whose write end it holds itself, so when its parent is
killed (SIGKILL: no clean-up runs) nothing ever wakes it: it lives on, re-parented to init.
``die_with_parent`` in the worker's start-up ends it within ``POLL_S`` of its parent.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5


def die_with_parent(parent: int) -> None:
    """End this process (exit status 1) once ``parent`` is no longer its parent: for a pool's ``initializer`` or
    the start of a spawned target, given the pid of the process that spawned it (``os.getpid()`` there)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="vlrl-lifeline", daemon=True).start()
