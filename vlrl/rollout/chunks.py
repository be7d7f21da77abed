"""The verifier's chunk size, tuned online: try each candidate, keep the fastest, try again now and then.

A small chunk hides more of the verifier's prefill under decoding but costs one engine
request per chunk; a large one is cheap but leaves more for the end. Which wins depends
on the engine, the model sizes and the response lengths, so it is measured: each
candidate runs for ``window`` steps, the one with the lowest mean step time is kept for
``retry_every`` steps, then every candidate is tried again (responses grow as RL goes on).
`vlrl train` takes the three from ``verifier.chunk_candidates``, ``chunk_window`` and
``chunk_retry_every``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CANDIDATES = (16, 32, 64, 128, 256)


@dataclass
class ChunkTuner:
    """``current`` is the chunk size for the next step; ``observe`` reports that step's time."""

    candidates: tuple[int, ...] = CANDIDATES
    window: int = 2  # steps per candidate while exploring
    retry_every: int = 50  # steps on the best before exploring again
    trial: int = 0  # index of the candidate being tried; len(candidates) while exploiting
    seen: list[float] = field(default_factory=list)  # step times of the current trial
    means: dict[int, float] = field(default_factory=dict)  # candidate -> mean step time of its last trial
    best: int = 0
    exploited: int = 0

    def __post_init__(self) -> None:
        if not self.candidates or min(self.candidates) < 1:
            raise ValueError(f"chunk candidates must be positive token counts, got {list(self.candidates)}")
        if self.window < 1 or self.retry_every < 1:
            raise ValueError(f"window and retry_every must be >= 1, got {self.window} and {self.retry_every}")

    @property
    def exploring(self) -> bool:
        return self.trial < len(self.candidates)

    @property
    def current(self) -> int:
        return self.candidates[self.trial] if self.exploring else self.best

    def observe(self, step_seconds: float) -> None:
        if not self.exploring:
            self.exploited += 1
            if self.exploited >= self.retry_every:
                self.trial, self.exploited = 0, 0
            return
        self.seen.append(step_seconds)
        if len(self.seen) < self.window:
            return
        self.means[self.candidates[self.trial]] = sum(self.seen) / len(self.seen)
        self.seen = []
        self.trial += 1
        if not self.exploring:
            self.best = min(self.candidates, key=lambda c: self.means[c])
