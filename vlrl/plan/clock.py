"""An asyncio event loop on simulated time: whenever nothing is ready to run, its clock jumps to the next timer.

Everything the twin's parts wait for is an ``asyncio.sleep`` of the seconds their cost
model gives, so a step that would take minutes is simulated in the time its Python takes.
Real I/O still works (a ready file descriptor is served at once); the loop only jumps when
it would otherwise sit in ``select`` waiting for a timer.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` starts at 0 and moves only by jumps to the next timer."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = _Jumping(self._selector, self)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class _Jumping:
    """The loop's selector, except that a wait for a timer is a jump of the clock instead of a sleep."""

    def __init__(self, selector: Any, loop: VirtualLoop):
        self._selector, self._loop = selector, loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:  # no timer at all: only another thread can wake the loop (e.g. its shutdown)
            return self._selector.select(None)
        ready = self._selector.select(0)
        if not ready and timeout > 0:
            self._loop.advance(timeout)
        return ready

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


async def settle() -> None:
    """Return once nothing else is ready to run at this instant: what the other tasks do now (a trajectory
    handing back its answer, a scheduler closing its batch) is done before the caller goes on."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    while getattr(loop, "_ready", None):  # asyncio's queue of callbacks ready now (the loop's own attribute)
        await asyncio.sleep(0)


def simulate(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh ``VirtualLoop``."""
    with asyncio.Runner(loop_factory=VirtualLoop) as runner:
        return runner.run(main)
