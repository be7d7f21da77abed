"""What each part of a step costs, in seconds: the twin's cost model.

``vlrl plan calibrate`` measures these on this machine; presets give them for GPU setups
from published figures. The decode step grows with the batch (linear in the requests
decoded together and in the context they attend to); prefill is charged per token not
already cached; the update per trained token (prompt, observations and answer: the
trainer's forward and backward read them all), over the micro-batches the trainer cuts
(``update_positions``); an engine that keeps its batch as one left-padded cache (the HF engine)
rebuilds it when requests join or leave. Inside a rollout the engine's work is scaled by ``rollout_factor``,
what a real rollout adds to the engine's own time; an update the engine decodes beside
(``decode_during_update``) by ``update_contention``, what sharing the machine with it costs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

from vlrl.trainer.batches import micro_batches


@dataclass(frozen=True)
class Costs:
    """Seconds per unit of work for one placement of the engine and the trainer."""

    decode_base_s: float  # one decode step of the engine, its fixed part
    decode_per_request_s: float  # ... and per request in the batch
    prefill_per_token_s: float  # prompt, observation or verifier tokens not already in the engine's cache
    tool_s: float  # one tool call, as the trajectory waits for it
    update_base_s: float  # one optimizer step's fixed part (optimizer, scheduling)
    update_per_token_s: float  # per trained token: logprob forward, backward (per padded one if ``padded_update``)
    sync_s: float  # pushing the weights to the engine
    decode_per_context_token_s: float = 0.0  # ... and per token of context the batch's requests attend to
    # a real rollout's engine time over the engine's measured alone: the event loop's work per delta (the manager,
    # the environment) and the GIL it shares with the engine's thread; scales decode and prefill
    rollout_factor: float = 1.0
    # an update's time while the engine decodes beside it (the disaggregated mode) over its time alone: the memory
    # bandwidth, caches and (on 2 vCPUs) the physical core they share
    update_contention: float = 1.0
    # the engine's batch is left-padded to its longest request (the HF engine), so a step attends to (requests x the
    # longest context) tokens; else (vLLM's paged KV) to the sum of the requests' contexts
    padded_batch: bool = False
    prefill_per_image_s: float = 0.0  # an image a prefill brings: the processor and the vision encoder's pass
    # the trainer right-pads each micro-batch to its longest row (vlrl's trainer), so padded positions cost as trained
    # ones; else (packed sequences, as verl's remove-padding) only the real tokens count
    padded_update: bool = False
    # a padded batch (``padded_batch``) is one cache the engine rebuilds as requests join or leave it: per position of
    # the rebuilt cache (its requests x its longest context)
    cache_per_position_s: float = 0.0
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "source" and not value >= 0:
                raise ValueError(f"cost {f.name} must be >= 0 seconds, got {value}")

    def decode_step_s(self, batch: int, context: int = 0) -> float:
        """One decode step of ``batch`` requests attending to ``context`` tokens between them."""
        return self.decode_base_s + self.decode_per_request_s * batch + self.decode_per_context_token_s * context

    def prefill_s(self, tokens: int, images: int = 0) -> float:
        """A prefill of ``tokens`` uncached tokens, ``images`` of their images new to the engine."""
        return self.prefill_per_token_s * tokens + self.prefill_per_image_s * images

    def update_s(self, tokens: int, beside_decoding: bool = False) -> float:
        """The update of ``tokens`` trained positions (``update_positions``), alone or with the engine decoding beside
        it."""
        alone = self.update_base_s + self.update_per_token_s * tokens
        return alone * self.update_contention if beside_decoding else alone


def update_positions(lengths: Sequence[int], micro_batch_tokens: int, padded: bool) -> int:
    """Positions an update of trajectories of ``lengths`` computes: cut as the trainer cuts them (``micro_batches``),
    each row padded to its micro-batch's longest when ``padded`` (``Costs.padded_update``)."""
    return sum(max(batch) * len(batch) if padded else sum(batch)
               for batch in micro_batches(lengths, micro_batch_tokens, size=int))


Placements = dict[str, Costs]  # "colocated" (engine and trainer take turns on every device) / "disaggregated"
PLACEMENTS = ("colocated", "disaggregated")


def save(placements: Placements, path: Path) -> None:
    path.write_text(json.dumps({name: asdict(costs) for name, costs in placements.items()}, indent=2) + "\n")


def load(path: str | Path) -> Placements:
    """A cost file written by `vlrl plan calibrate`: {"colocated": {...}, "disaggregated": {...}}."""
    try:
        raw = json.loads(Path(path).read_text())
        placements = {name: Costs(**raw[name]) for name in PLACEMENTS}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a cost file of `vlrl plan calibrate` ({type(e).__name__}: {e})") from e
    return placements
