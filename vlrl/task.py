"""Tasks: named, seeded sources of samples, each naming the reward that scores its answers.

A task is a callable registered under kind ``task``: ``task(seed=..., **args)`` returns an
iterable of ``Sample``. Its reward (a registry name of kind ``reward``) travels with it, so
a run that switches tasks cannot silently keep the wrong metric; ``TaskConfig.reward``
overrides it on purpose.

Rows that cannot become samples (a corrupt image, a missing field, a box outside the
image, an empty answer) raise ``DataError`` with the source, the row and the problem, or
are skipped and counted in ``RowErrors`` — as ``on_error`` says. Nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, TypeVar

from vlrl.config import TaskConfig
from vlrl.registry import register, resolve
from vlrl.types import Sample

F = TypeVar("F", bound=Callable[..., Iterable[Sample]])
OnError = Literal["fail", "skip"]


def task(name: str, reward: str) -> Callable[[F], F]:
    """Decorator: register a sample source as task ``name``, scored by reward ``reward``."""

    def deco(fn: F) -> F:
        fn.reward = reward  # type: ignore[attr-defined]
        return register("task", name)(fn)

    return deco


def open_task(cfg: TaskConfig, seed: int = 0) -> tuple[Iterable[Sample], str]:
    """The task's samples and the name of the reward that scores them."""
    source = resolve("task", cfg.name)
    reward = cfg.reward or getattr(source, "reward", "")
    if not reward:
        raise ValueError(f"task {cfg.name!r} names no reward; set task.reward")
    resolve("reward", reward)  # fail now, not after the first rollout
    try:
        samples = source(seed=seed, **cfg.args)
    except TypeError as e:
        raise ValueError(f"task {cfg.name!r} does not take the arguments {sorted(cfg.args)}: {e}") from None
    return samples, reward


class DataError(ValueError):
    """A row that cannot become a sample: what is wrong with it (``problem`` names the kind, for counts)."""

    def __init__(self, message: str, problem: str = "") -> None:
        super().__init__(message)
        self.problem = problem or message


@dataclass
class RowErrors:
    """The ``on_error`` policy of one source, and the count of rows it skipped by problem."""

    source: str
    on_error: OnError = "fail"
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # problem -> the first row it was seen at

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")

    def handle(self, row: str, error: DataError) -> None:
        """Raise (``fail``) or count (``skip``) the problem found at ``row``."""
        message = f"{self.source}: row {row}: {error}"
        if self.on_error == "fail":
            raise DataError(message, error.problem) from None
        self.skipped[error.problem] += 1
        self.examples.setdefault(error.problem, message)

    @property
    def total(self) -> int:
        return sum(self.skipped.values())
