"""The environment protocol: Sample --> Episode, and a finished policy turn --> Observation or done.

An ``Env`` is shared by every trajectory of a run (it owns the tokenizer, the templates
and, for tool environments, the sandbox pool); ``reset`` opens one ``Episode`` per
trajectory. The episode owns its ``Trajectory``: ``step`` appends the policy turn it is
given and the observation it inserts, so loss masks are set where tokens are born.
Environments are plug-ins found through the registry (kind ``env``), like tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from PIL import Image

from vlrl.registry import resolve
from vlrl.types import Completion, EndReason, Sample, Trajectory

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class Observation:
    """Ids (and their images) an environment inserts, with the text it showed, for transcripts."""

    token_ids: tuple[int, ...]
    images: tuple[Image.Image, ...]
    text: str


@dataclass(frozen=True)
class Step:
    """What one policy turn led to: an observation to continue from, or the end of the episode."""

    observation: Observation | None  # None when done
    done: bool
    reason: EndReason | None = None  # why the episode ended (when done)


@dataclass(frozen=True)
class TranscriptEntry:
    """One message of an episode as a person reads it (images shown inline, in order)."""

    role: Role
    text: str
    images: tuple[Image.Image, ...] = ()


class Episode(Protocol):
    """One trajectory's interaction; created by ``Env.reset``."""

    trajectory: Trajectory
    transcript: list[TranscriptEntry]

    @property
    def done(self) -> bool: ...

    async def step(self, turn: Completion) -> Step:
        """Append a finished policy turn; run what it asks for; return the observation or done."""
        ...

    async def close(self) -> None:
        """Release the episode's resources (idempotent; also called when it is cancelled)."""
        ...


class Env(Protocol):
    """Sample --> Episode. Use ``async with`` to start and stop what it shares (e.g. a sandbox)."""

    async def __aenter__(self) -> "Env": ...

    async def __aexit__(self, *exc: Any) -> None: ...

    def reset(self, sample: Sample, episode_id: str) -> Episode: ...


def make_env(config: Any, tokenizer: Any, vision: Any) -> Env:
    """The environment ``config.name`` names (registry kind ``env``), built from ``config``."""
    return resolve("env", config.name)(config, tokenizer, vision)
