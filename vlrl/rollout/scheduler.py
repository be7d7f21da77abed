"""Inter-step overlap: start more prompt groups than a step trains, and carry the slowest over.

Each step keeps ``groups + extra`` prompt groups in flight (B + Δ). As soon as B groups
have ended whole, the step's batch is closed: those B are trained, and every other
trajectory is carried over. By default it is paused (``RolloutManager.pause``: its engine
request is aborted and its tokens kept; one inside a tool call finishes the call first),
and after the weight update ``step`` resumes it under the new weights, and tops the flight
up with new groups, so a step never waits for the long tail. With ``keep_decoding`` (an
engine with resources of its own: the disaggregated mode) it goes on decoding through the
update, the flight is topped up right at the close, so the engine decodes the next step's
groups through the update too, and the new weights reach them between two of their tokens.
Tokens sampled before a weight update keep the version that produced it; the loss
corrects them with the importance ratio against their behavior logprobs.

No partial work is thrown away by default: a carried-over trajectory runs until it ends
or reaches its token cap, however many steps that takes. With ``max_staleness`` set, a
group carried over more steps than that is dropped, counted as ``staleness``. Every group
that enters is trained exactly once, dropped with a reason, or still in flight when the
run ends (``close`` says how many). Among groups that ended, the oldest go first. A
checkpoint keeps the groups in flight with their decoding so far (``pending``: each
trajectory's finished turns and the tokens a pause cut off, with their logprobs and
versions); a resumed run starts them again first, from there.

Δ may follow the reward (``ExtraTuner``, OPPO's rule): while the mean reward still rises,
more groups in flight hide more of the tail; near convergence Δ shrinks back to 0.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from vlrl.clock import now
from vlrl.metrics import SchedFigures
from vlrl.rollout.manager import KeptWork, RolloutManager, RolloutResult, Seconds
from vlrl.types import Sample, Trajectory

Pending = tuple[Sample, int, list[KeptWork | Trajectory | BaseException]]  # a group in flight, as kept


@dataclass
class Flight:
    """One prompt group in flight: its sample, its trajectories' tasks, and how often it was carried over."""

    sample: Sample
    tasks: list[asyncio.Task[Trajectory]]
    order: int  # admission order: older groups are trained first
    deferred: int = 0

    @property
    def done(self) -> bool:
        return all(t.done() for t in self.tasks)


@dataclass
class StepStats:
    """What a step's scheduling did, for the metrics."""

    started: int = 0  # groups started this step
    carried: int = 0  # groups carried over to the next step
    in_flight: int = 0  # groups in flight when the batch closed
    paused: int = 0  # engine requests aborted at the batch's close
    extra: int = 0  # Δ this step
    staleness: Counter = field(default_factory=Counter)  # steps carried -> trained groups
    token_staleness: Counter = field(default_factory=Counter)  # versions behind the engine's -> trained tokens
    finished_lengths: list[int] = field(default_factory=list)  # policy tokens of every trajectory ended by the close

    def figures(self) -> SchedFigures:
        """The step's ``sched/`` figures. ``response_length_finished`` beside the trained
        ``response_length`` shows whether closing early biases training toward short answers."""
        return SchedFigures(groups_started=self.started, groups_carried=self.carried, requests_paused=self.paused,
                            extra_groups=self.extra, deferred_fraction=self.carried / max(self.in_flight, 1),
                            staleness={str(k): n for k, n in sorted(self.staleness.items())},
                            token_staleness={str(k): n for k, n in sorted(self.token_staleness.items())},
                            response_length_finished=sum(self.finished_lengths) / max(len(self.finished_lengths), 1))


class OverlapScheduler:
    """Closes each step's batch at ``groups`` whole groups out of ``groups + extra`` in flight."""

    def __init__(self, manager: RolloutManager, groups: int, extra: int, max_staleness: int | None = None,
                 tuner: ExtraTuner | None = None, keep_decoding: bool = False):
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if extra < 0 or (max_staleness is not None and max_staleness < 0):
            raise ValueError(f"extra and max_staleness must be >= 0, got {extra} and {max_staleness}")
        self.manager, self.groups, self.extra, self.max_staleness = manager, groups, extra, max_staleness
        self.tuner, self.keep_decoding = tuner, keep_decoding
        self.flights: list[Flight] = []
        self._admitted = 0

    def pending(self) -> list[Pending]:
        """The groups in flight as (sample, steps carried, each trajectory's kept work or end): what a checkpoint
        keeps, so a resumed run loses no decoding."""
        return [(f.sample, f.deferred, [self.manager.kept(t) for t in f.tasks]) for f in self.flights]

    def readmit(self, pending: Sequence[Pending], seed: int, tag: str) -> None:
        """Start a checkpoint's groups in flight again, each trajectory from its kept work."""
        for k, entry in enumerate(pending):
            if len(entry) != 3:
                raise ValueError(f"the checkpoint's group in flight {k} has {len(entry)} fields, not (sample, steps "
                                 f"carried, kept work): a checkpoint written before vlrl kept partial work; resume "
                                 f"from a newer one or start the run again")
            sample, deferred, kept = entry
            tasks = self.manager.start_group(sample, f"{tag}-{k}", seed * 7_919 + k, kept)
            self.flights.append(Flight(sample, tasks, self._admitted, deferred))
            self._admitted += 1

    async def step(self, draw: Callable[[int], Sequence[Sample]], seed: int, tag: str) -> tuple[RolloutResult,
                                                                                               StepStats]:
        """Resume what was paused, top up to ``groups + extra`` with ``draw(n)`` new samples, close at ``groups``."""
        start = now()
        stats = StepStats(extra=self.extra)
        self.manager.resume()
        self._top_up(draw, seed, tag, stats)
        while sum(f.done for f in self.flights) < min(self.groups, len(self.flights)):
            pending = [t for f in self.flights for t in f.tasks if not t.done()]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        generated = now()
        if self.keep_decoding:
            self.manager.carry_over()
        else:
            stats.paused = await self.manager.pause()
        stats.in_flight = len(self.flights)
        stats.finished_lengths = [sum(t.result().loss_mask) for f in self.flights for t in f.tasks
                                  if t.done() and not t.cancelled() and t.exception() is None]
        chosen = sorted((f for f in self.flights if f.done), key=lambda f: f.order)[: self.groups]
        result = RolloutResult([])
        for flight in chosen:
            result.add(flight.sample, [_outcome(t) for t in flight.tasks])
            stats.staleness[flight.deferred] += 1
        version = self.manager.engine.version
        stats.token_staleness.update(version - v for t in result.trajectories for v in t.versions if v >= 0)
        self.flights = [f for f in self.flights if f not in chosen]
        for flight in self.flights:
            flight.deferred += 1
        cap = self.max_staleness
        for flight in [f for f in self.flights if cap is not None and f.deferred > cap]:
            await _cancel(flight)
            result.dropped["staleness"] += len(flight.tasks)
            self.flights.remove(flight)
        stats.carried = len(self.flights)
        if self.keep_decoding:  # the engine decodes new groups through the update too, not only the carried ones
            self._top_up(draw, seed, tag, stats)
        end = now()
        result.seconds = Seconds(wall=end - start, generate=generated - start)
        return result, stats

    def _top_up(self, draw: Callable[[int], Sequence[Sample]], seed: int, tag: str, stats: StepStats) -> None:
        """Start ``draw(n)`` new groups, so ``groups + extra`` are in flight."""
        for k, sample in enumerate(draw(max(self.groups + self.extra - len(self.flights), 0)), start=stats.started):
            tasks = self.manager.start_group(sample, f"{tag}-{k}", seed * 7_919 + k)
            self.flights.append(Flight(sample, tasks, self._admitted))
            self._admitted += 1
            stats.started += 1

    def tune(self, mean_reward: float) -> None:
        """After a step: let the tuner (if any) set Δ from the reward's trend."""
        if self.tuner is not None:
            self.extra = self.tuner.update(mean_reward)

    async def close(self) -> int:
        """Cancel everything in flight (the run is ending); returns how many groups that was."""
        self.manager.resume()
        left = len(self.flights)
        for flight in self.flights:
            await _cancel(flight)
        self.flights = []
        return left


@dataclass
class ExtraTuner:
    """Δ from the reward's trend (OPPO): +``stride`` while the least-squares slope of the mean reward
    over the last ``window`` steps is positive, -``stride`` otherwise, within [0, ``ceiling``]."""

    extra: int
    ceiling: int
    stride: int = 1
    window: int = 5
    rewards: deque = field(default_factory=deque)

    def update(self, mean_reward: float) -> int:
        """Record a step's mean reward; return Δ for the next step."""
        self.rewards.append(mean_reward)
        if len(self.rewards) > self.window:
            self.rewards.popleft()
        if len(self.rewards) == self.window:
            grow = _slope(list(self.rewards)) > 0
            self.extra = min(self.extra + self.stride, self.ceiling) if grow else max(self.extra - self.stride, 0)
        return self.extra


def _slope(ys: Sequence[float]) -> float:
    n = len(ys)
    mean_x, mean_y = (n - 1) / 2, sum(ys) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys)) / sum((x - mean_x) ** 2 for x in range(n))


def _outcome(task: asyncio.Task[Trajectory]) -> Trajectory | BaseException:
    return task.exception() or task.result()


async def _cancel(flight: Flight) -> None:
    for task in flight.tasks:
        task.cancel()
    await asyncio.gather(*flight.tasks, return_exceptions=True)
