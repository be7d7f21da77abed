"""PPO's critic: a copy of the VLM with a scalar value head on its last hidden state.

V(s_t) is read at the position before token t, aligned like the logprobs (entry t-1 of
a sequence of L ids belongs to token t), so GAE, the policy loss and the value loss all
index the same (B, L - 1) grid. The critic has its own optimizer; it never sends
weights to the engine. Its values can be streamed (``streamed``, ``vlrl.trainer.streamed``):
computed piece by piece while a trajectory decodes, under the weights of the step they are
read at (``version`` counts the critic's optimizer steps).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForImageTextToText

from vlrl.algos.ppo import clipped_value_loss
from vlrl.config import CriticConfig
from vlrl.trainer.batches import micro_batches, pad
from vlrl.trainer.logprobs import last_hidden
from vlrl.trainer.streamed import Reading, StreamedScores
from vlrl.types import Trajectory
from vlrl.vision import VisionInputs


class Critic(torch.nn.Module):
    """Values per token of whole multimodal trajectories."""

    def __init__(self, model_dir: str | Path, vision: VisionInputs, cfg: CriticConfig, dtype: torch.dtype):
        super().__init__()
        self.backbone = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
        hidden = self.backbone.config.get_text_config().hidden_size
        self.head = torch.nn.Linear(hidden, 1, dtype=dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.vision, self.cfg = vision, cfg
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr)
        self.version = 0  # optimizer steps taken (a loaded state counts as one): streamed values of another are stale
        self.streamed = StreamedScores("critic", self.backbone, vision, Reading(self._rows, _same, hidden_states=True),
                                       lambda: self.version)

    def _rows(self, out: object) -> torch.Tensor:
        """V at every position of one sequence's forward."""
        return self.head(out.hidden_states[-1][0]).squeeze(-1).float()  # type: ignore[attr-defined]

    def _values(self, trajectories: Sequence[Trajectory]) -> list[torch.Tensor]:
        hidden, _, lengths = last_hidden(self.backbone, self.vision, [(t.token_ids, t.images) for t in trajectories])
        values = self.head(hidden[:, :-1]).squeeze(-1).float()
        return [values[r, : n - 1] for r, n in enumerate(lengths)]

    @torch.no_grad()
    def values(self, trajectories: Sequence[Trajectory]) -> list[torch.Tensor]:
        """V per token (length L - 1 each), without gradient: the values GAE uses (those streamed while a
        trajectory decoded, its rest computed now; the others in micro-batches)."""
        self.eval()
        out: dict[int, torch.Tensor] = {}  # id(trajectory) -> its values (micro-batches sort them by length)
        for traj in trajectories:
            streamed = self.streamed.take(traj)
            if streamed is not None:
                out[id(traj)] = streamed
        rest = [t for t in trajectories if id(t) not in out]
        self.streamed.computed(sum(len(t.token_ids) - 1 for t in rest))
        for batch in micro_batches(rest, self.cfg.micro_batch_tokens):
            out |= {id(t): v.cpu() for t, v in zip(batch, self._values(batch))}
        return [out[id(t)] for t in trajectories]

    def step(self, trajectories: Sequence[Trajectory], old_values: Sequence[torch.Tensor],
             returns: Sequence[torch.Tensor]) -> dict[str, float]:
        """One optimizer step on the clipped value loss over the policy tokens."""
        self.train()
        start = time.perf_counter()
        total = float(sum(sum(t.loss_mask[1:]) for t in trajectories))
        index = {id(t): k for k, t in enumerate(trajectories)}
        loss_sum = 0.0
        for batch in micro_batches(trajectories, self.cfg.micro_batch_tokens):
            rows = [index[id(t)] for t in batch]
            values = pad(self._values(batch))
            device = values.device
            mask = pad([torch.tensor(t.loss_mask[1:], dtype=torch.float32) for t in batch]).to(device)
            loss = clipped_value_loss(values, pad([old_values[r] for r in rows]).to(device),
                                      pad([returns[r] for r in rows]).to(device), mask,
                                      self.cfg.value_clip) * (mask.sum() / max(total, 1.0))
            loss.backward()
            loss_sum += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        return {"value_loss": loss_sum, "value_grad_norm": grad_norm, "critic_s": time.perf_counter() - start}


def _same(rows: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
    """A value belongs to its position, whatever token follows."""
    return rows
