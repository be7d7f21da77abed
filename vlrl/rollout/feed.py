"""Hand a growing trajectory to downstream models while the policy is still writing it (intra-step overlap).

Every ``chunk`` policy tokens, and at each observation, the new piece goes to the sink's
``extend`` in a background task, so the sink computes while the engine keeps decoding:

    the verifier   prefills (``VerifierFeed``); when the trajectory ends, only the tail and the
                   question are left for ``Verifier.finish``;
    a trainer-side model (the KL reference, PPO's critic: ``StreamedFeed``) runs its forward
                   on the trainer's thread, idle during the rollout; at the end the rest is
                   computed and the scores wait on the trajectory for the algorithm.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, Sequence

from PIL import Image

from vlrl.rewards.verifier import Verdict, Verifier
from vlrl.rollout.timeline import Timeline
from vlrl.trainer.streamed import StreamedScores
from vlrl.types import Trajectory
from vlrl.worker_thread import WorkerThread


class Sink(Protocol):
    """Where a feed's pieces go."""

    async def extend(self, traj_id: str, new_ids: Sequence[int], new_images: Sequence[Image.Image] = ()) -> None:
        """Take the trajectory's next piece (its images' placeholders complete) and compute it."""

    def discard(self, traj_id: str) -> None:
        """Forget a trajectory that will not end (it failed, or was dropped)."""


class Feed:
    """The pieces of one trajectory, sent in order to ``sink``; ``chunk`` 0 sends nothing before the end."""

    def __init__(self, sink: Sink, traj_id: str, chunk: int, timeline: Timeline | None = None, span: str = ""):
        self.sink, self.traj_id, self.chunk = sink, traj_id, chunk
        self.timeline = timeline or Timeline()  # where the sink's calls are recorded as ``span`` spans ("": none)
        self.span = span
        self.sent_ids = self.sent_images = 0
        self.buffer: list[int] = []
        self.tasks: list[asyncio.Task] = []

    def tokens(self, ids: Sequence[int]) -> None:
        """Policy tokens as they stream in; a full chunk is sent."""
        if not self.chunk:
            return
        self.buffer.extend(ids)
        if len(self.buffer) >= self.chunk:
            self._send(self.buffer, ())

    def catch_up(self, traj: Trajectory) -> None:
        """Send whatever ``traj`` holds beyond what was sent (the buffered tokens, an observation)."""
        if not self.chunk:
            return
        ids = traj.token_ids
        if len(ids) > self.sent_ids:
            self._send(ids[self.sent_ids:], traj.images[self.sent_images:])

    def cancel(self) -> None:
        """Stop the pieces in flight and drop the trajectory from the sink (it will not end)."""
        for task in self.tasks:
            task.cancel()
        self.sink.discard(self.traj_id)

    def _send(self, ids: Sequence[int], images: Sequence[Image.Image]) -> None:
        piece = list(ids)
        self.sent_ids += len(piece)
        self.sent_images += len(images)
        self.buffer = []
        self.tasks.append(asyncio.create_task(self._extend(piece, list(images))))

    async def _extend(self, ids: list[int], images: list[Image.Image]) -> None:
        if not self.span:
            await self.sink.extend(self.traj_id, ids, images)
            return
        with self.timeline.span(self.traj_id, self.span):
            await self.sink.extend(self.traj_id, ids, images)


class VerifierFeed(Feed):
    """A trajectory fed to the verifier, its calls drawn as ``verifier`` spans; ``finish`` gives the verdict."""

    def __init__(self, verifier: Verifier, traj_id: str, chunk: int, timeline: Timeline | None = None):
        super().__init__(verifier, traj_id, chunk, timeline, "verifier")
        self.verifier = verifier

    async def finish(self, traj: Trajectory) -> Verdict:
        """The verifier's verdict on the whole trajectory, reusing what was prefilled on the way."""
        if not self.chunk:
            with self.timeline.span(self.traj_id, "verifier"):
                return await self.verifier.score(self.traj_id, traj.token_ids, traj.images)
        self.catch_up(traj)
        await asyncio.gather(*self.tasks)
        with self.timeline.span(self.traj_id, "verifier"):
            return await self.verifier.finish(self.traj_id)


class OnThread:
    """A trainer-side model's ``StreamedScores`` as a sink: its forwards run on ``worker`` (the trainer's thread,
    which also runs the updates, so a piece never meets weights being changed). A piece that fails is counted in
    ``errors`` and the trajectory is left to the algorithm to compute whole."""

    def __init__(self, scores: StreamedScores, worker: WorkerThread):
        self.scores, self.worker = scores, worker
        self.errors: list[str] = []
        self._fed: dict[str, tuple[list[int], list[Image.Image]]] = {}  # trajectory -> its ids and images so far
        self._sealing: set[asyncio.Task] = set()

    async def extend(self, traj_id: str, new_ids: Sequence[int], new_images: Sequence[Image.Image] = ()) -> None:
        ids, images = self._fed.setdefault(traj_id, ([], []))
        ids.extend(new_ids)
        images.extend(new_images)
        try:
            await self.worker.run(self.scores.advance, traj_id, list(ids), list(images))
        except Exception as e:  # the scores are computed whole after the rollout; the trajectory goes on
            self.errors.append(f"{self.scores.name} {traj_id}: {type(e).__name__}: {e}")
            self.discard(traj_id)

    def seal(self, traj: Trajectory) -> None:
        """``traj`` ended: its rest is computed on the worker in the background (the algorithm waits for it by
        running on the same thread)."""
        task = asyncio.create_task(self._seal(traj))
        self._sealing.add(task)
        task.add_done_callback(self._sealed)

    async def _seal(self, traj: Trajectory) -> None:
        # a task, so that it starts after the pieces sent before it (tasks start in the order they were made)
        self._fed.pop(traj.id, None)
        await self.worker.run(self.scores.seal, traj)

    def discard(self, traj_id: str) -> None:
        self._fed.pop(traj_id, None)
        self.scores.discard(traj_id)

    def _sealed(self, task: asyncio.Task) -> None:
        self._sealing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(f"{self.scores.name}: {type(task.exception()).__name__}: {task.exception()}")


class StreamedFeed(Feed):
    """A trajectory fed to a trainer-side model (``OnThread``); ``seal`` when it ends."""

    def __init__(self, sink: OnThread, traj_id: str, chunk: int):
        super().__init__(sink, traj_id, chunk)
        self.on_thread = sink

    def seal(self, traj: Trajectory) -> None:
        self.on_thread.seal(traj)
