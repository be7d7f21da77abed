"""Another model's per-token scores of a trajectory, computed piece by piece while the policy writes it.

PPO reads two models besides the policy: the KL reference's logprob of each token and the
critic's value before each token. Both depend on the trajectory's ids and images alone, so,
as OPPO streams to every downstream model, they can be computed with a KV cache while the
trajectory decodes, on the trainer's thread, which a rollout leaves idle; the algorithm then
finds them ready (``take``) and computes only what is left. A model whose weights changed
since a trajectory's first piece (the critic steps at every update) starts that trajectory
over under its new weights, so a streamed score is the one-shot score up to float summation
order, whenever the update falls.

Entry t - 1 belongs to token t, as in ``vlrl.trainer.logprobs``: a piece's last position
waits for the next piece's first token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from transformers import DynamicCache, PreTrainedModel

from vlrl.trainer.logprobs import forward_from
from vlrl.types import Trajectory
from vlrl.vision import VisionInputs


@dataclass(frozen=True)
class Reading:
    """What a forward gives per position, and how a position's row becomes the score of the token after it."""

    rows: Callable[[Any], torch.Tensor]  # the model's output (one sequence) -> a row per position, (n, ...)
    pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # rows (n, ...), next ids (n,) -> scores (n,)
    hidden_states: bool = False  # the rows read the last hidden state


LOGPROBS = Reading(lambda out: torch.log_softmax(out.logits[0].float(), dim=-1),
                   lambda rows, following: rows.gather(-1, following.unsqueeze(-1)).squeeze(-1))


@dataclass
class _Progress:
    version: int
    kv: DynamicCache | None = None
    ids: list[int] = field(default_factory=list)  # those whose KV is computed
    scores: list[torch.Tensor] = field(default_factory=list)
    last: torch.Tensor | None = None  # the last position's row, for the next piece's first token


class StreamedScores:
    """``model``'s scores (``reading``) of each token of the trajectories fed to it; ``version()`` is the model's
    weight version. Every call runs on the thread that owns the model (the trainer's)."""

    def __init__(self, name: str, model: PreTrainedModel, vision: VisionInputs, reading: Reading,
                 version: Callable[[], int]):
        self.name, self.model, self.vision, self.reading, self.version = name, model, vision, reading, version
        self._progress: dict[str, _Progress] = {}
        self.streamed_tokens = self.late_tokens = 0  # computed while decoding, and at ``take``

    @torch.no_grad()
    def advance(self, traj_id: str, ids: Sequence[int], images: Sequence[Image.Image]) -> None:
        """Compute the ids of ``traj_id`` not computed yet (``ids``: all of them so far, whole image runs)."""
        progress = self._current(traj_id)
        self.streamed_tokens += self._compute(progress, ids, images)

    def seal(self, traj: Trajectory) -> None:
        """``traj`` has ended: compute its rest and keep its scores on it (``traj.streamed``), at the version they
        were computed under; forget its progress."""
        self.streamed_tokens += self._close(traj)

    def take(self, traj: Trajectory) -> torch.Tensor | None:
        """The scores of ``traj``'s tokens (L - 1) under the model's current weights (its rest computed now if it
        was not sealed); None when they were not streamed: the caller computes them, batched, and reports how
        many with ``computed``."""
        self.late_tokens += self._close(traj)
        version, scores = traj.streamed.pop(self.name, (None, None))
        return scores if version == self.version() else None

    def discard(self, traj_id: str) -> None:
        """Forget a trajectory that will not be sealed (it failed)."""
        self._progress.pop(traj_id, None)

    def computed(self, tokens: int) -> None:
        """The caller computed ``tokens`` itself, after the rollout (counted as late)."""
        self.late_tokens += tokens

    def take_stats(self) -> dict[str, int]:
        """Tokens computed during the rollout and after it since the last call, named after this model."""
        stats = {f"{self.name}_streamed_tokens": self.streamed_tokens, f"{self.name}_late_tokens": self.late_tokens}
        self.streamed_tokens = self.late_tokens = 0
        return stats

    def _current(self, traj_id: str) -> _Progress:
        """The trajectory's progress under the model's current weights (started over if they changed)."""
        progress = self._progress.get(traj_id)
        if progress is None or progress.version != self.version():
            progress = self._progress[traj_id] = _Progress(self.version())
        return progress

    @torch.no_grad()
    def _close(self, traj: Trajectory) -> int:
        """Finish ``traj``'s progress under the current weights into ``traj.streamed``; the tokens computed."""
        progress = self._progress.pop(traj.id, None)
        if progress is None or progress.version != self.version() or traj.token_ids[:len(progress.ids)] != progress.ids:
            return 0  # never streamed, computed under other weights, or fed ids the trajectory does not hold
        tokens = self._compute(progress, traj.token_ids, traj.images)
        traj.streamed[self.name] = (progress.version, torch.cat(progress.scores).cpu())
        return tokens

    def _compute(self, progress: _Progress, ids: Sequence[int], images: Sequence[Image.Image]) -> int:
        """Forward the ids after those computed; returns how many."""
        start = len(progress.ids)
        if start >= len(ids):
            return 0
        self.model.eval()
        out = forward_from(self.model, self.vision, ids, images, start, progress.kv, self.reading.hidden_states)
        rows = self.reading.rows(out)
        following = torch.as_tensor(list(ids[start:]), device=rows.device)
        if progress.last is not None:
            rows = torch.cat([progress.last, rows])
        else:
            following = following[1:]
        progress.scores.append(self.reading.pick(rows[:-1], following))
        progress.kv, progress.ids, progress.last = out.past_key_values, list(ids), rows[-1:]
        return len(ids) - start
