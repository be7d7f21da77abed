"""Hand a growing trajectory to the verifier while the policy is still writing it (intra-step overlap).

Every ``chunk`` policy tokens, and at each observation, the new piece goes to
``Verifier.extend`` in a background task, so the verifier prefills while the engine keeps
decoding; when the trajectory ends, only the tail and the question are left for
``Verifier.finish``.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from PIL import Image

from vlrl.rewards.verifier import Verdict, Verifier
from vlrl.rollout.timeline import Timeline
from vlrl.types import Trajectory


class VerifierFeed:
    """The pieces of one trajectory, sent in order; ``chunk`` 0 sends nothing before the end."""

    def __init__(self, verifier: Verifier, traj_id: str, chunk: int, timeline: Timeline | None = None):
        self.verifier, self.traj_id, self.chunk = verifier, traj_id, chunk
        self.timeline = timeline or Timeline()  # where the verifier's calls are recorded, as ``verifier`` spans
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

    async def finish(self, traj: Trajectory) -> Verdict:
        """The verifier's verdict on the whole trajectory, reusing what was prefilled on the way."""
        if not self.chunk:
            with self.timeline.span(self.traj_id, "verifier"):
                return await self.verifier.score(self.traj_id, traj.token_ids, traj.images)
        self.catch_up(traj)
        await asyncio.gather(*self.tasks)
        with self.timeline.span(self.traj_id, "verifier"):
            return await self.verifier.finish(self.traj_id)

    def cancel(self) -> None:
        """Stop the pieces in flight and drop the trajectory from the verifier (it will not finish)."""
        for task in self.tasks:
            task.cancel()
        self.verifier.discard(self.traj_id)

    def _send(self, ids: Sequence[int], images: Sequence[Image.Image]) -> None:
        piece = list(ids)
        self.sent_ids += len(piece)
        self.sent_images += len(images)
        self.buffer = []
        self.tasks.append(asyncio.create_task(self._extend(piece, list(images))))

    async def _extend(self, ids: list[int], images: list[Image.Image]) -> None:
        with self.timeline.span(self.traj_id, "verifier"):
            await self.verifier.extend(self.traj_id, ids, images)
