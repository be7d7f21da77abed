"""Drive trajectories concurrently on asyncio: decode with the engine, act in the env, reward the answer.

Each trajectory is its own task: while one waits for its tool in the sandbox, the others
keep decoding (the engine batches whatever requests are in flight). Observation tokens
enter with loss mask 0 through the episode; every policy token keeps its behavior
logprob and the weight version that sampled it. G trajectories of one sample form a
``Group``. How rewards are scheduled is the ``schedule``: ``sync`` rewards every
trajectory after all have finished (the baseline the papers compare against); ``async``
rewards each as it ends.

With a ``judge`` (a model grading the answer against the ground truth, ``vlrl.rewards.judge``),
its score is the reward part ``judge`` and weighs its ``weight`` in the total; the sample's
part of its prompt is prefilled as each trajectory starts (``reward_judge.ahead``).
With a ``verifier`` (a model judging the answer, ``vlrl.rewards.verifier``), its P(Yes) is
the reward part ``verifier`` and weighs ``verifier_weight`` in the total. Under ``async``
with ``chunk_tokens`` > 0 each trajectory streams to it while decoding (``VerifierFeed``:
every ``chunk_tokens`` policy tokens and each observation), so the verifier's prefill
hides under the policy's decoding; under ``sync`` it reads each whole trajectory at the end.
``streams`` (the trainer's KL reference, PPO's critic) are fed the same way under either
schedule, every ``stream_chunk`` policy tokens, so their forwards run while decoding goes on.

Nothing is lost: a trajectory whose engine request, episode or reward raises is recorded
in ``RolloutResult.dropped`` with the reason, and its group is not trained (GRPO trains
groups whole).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable, Literal, Sequence

from vlrl.clock import now
from vlrl.engines.base import Engine, collect
from vlrl.engines.sampling import continued
from vlrl.env import Env
from vlrl.rewards.judge import AnswerJudge, Judgement
from vlrl.rewards.verifier import Verdict, Verifier
from vlrl.rollout.feed import Feed, OnThread, StreamedFeed, VerifierFeed
from vlrl.rollout.timeline import Timeline
from vlrl.types import Completion, Delta, Group, RewardContext, Sample, SamplingParams, Score, Timings, Trajectory

Schedule = Literal["sync", "async"]
Reward = Callable[[str, Sequence[str]], Score]


@dataclass(frozen=True)
class Seconds:
    """Where a rollout's time went."""

    wall: float = 0.0  # the whole rollout
    generate: float = 0.0  # until the last trajectory's last token (tools included)
    reward: float = 0.0  # rewarding after that (sync; else rewards run during generation)


@dataclass
class KeptWork:
    """A trajectory's decoding so far, as a checkpoint keeps it: the policy turns it finished (their tools are run
    again on resume, which rebuilds the same observations) and the tokens of the turn it was in when paused."""

    traj_id: str
    turns: list[Completion] = field(default_factory=list)
    partial: Completion | None = None  # the unfinished turn's tokens, each with its logprob and version
    deferred_steps: int = 0

    @property
    def tokens(self) -> int:
        """Policy tokens kept."""
        return sum(len(c.token_ids) for c in self.turns) + (len(self.partial.token_ids) if self.partial else 0)


@dataclass
class RolloutResult:
    """The groups of one rollout, what was dropped and why, and the phase times."""

    groups: list[Group]
    dropped: Counter = field(default_factory=Counter)  # reason -> trajectories
    errors: list[str] = field(default_factory=list)  # the first few messages, for the log
    seconds: Seconds = field(default_factory=Seconds)

    @property
    def trajectories(self) -> list[Trajectory]:
        return [t for g in self.groups for t in g.trajectories]

    def add(self, sample: Sample, members: Sequence[Trajectory | BaseException]) -> None:
        """Keep a whole group, or count its trajectories as dropped with the first errors' messages."""
        failures = [m for m in members if isinstance(m, BaseException)]
        if not failures:
            self.groups.append(Group(sample, [m for m in members if isinstance(m, Trajectory)]))
            return
        for failure in failures:
            if isinstance(failure, asyncio.CancelledError):
                raise failure
            self.dropped[f"error: {type(failure).__name__}"] += 1
            if len(self.errors) < 5:
                self.errors.append(f"sample {sample.id!r}: {type(failure).__name__}: {failure}")
        if len(failures) < len(members):
            self.dropped["group incomplete"] += len(members) - len(failures)


class RolloutManager:
    """Samples x G trajectories through ``engine`` and ``env``, rewarded by ``reward``."""

    def __init__(self, engine: Engine, env: Env, tokenizer: Any, reward: Reward, sampling: SamplingParams,
                 group_size: int, schedule: Schedule = "sync", verifier: Verifier | None = None,
                 verifier_weight: float = 0.0, chunk_tokens: int = 0, timeline: bool = True,
                 streams: Sequence[OnThread] = (), stream_chunk: int = 0, judge: AnswerJudge | None = None):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if schedule not in ("sync", "async"):
            raise ValueError(f"unknown schedule {schedule!r}; choose sync or async")
        if not 0.0 <= verifier_weight <= 1.0:
            raise ValueError(f"verifier_weight must be in [0, 1], got {verifier_weight}")
        if chunk_tokens < 0:
            raise ValueError(f"chunk_tokens must be >= 0, got {chunk_tokens}")
        self.engine, self.env, self.tokenizer, self.reward = engine, env, tokenizer, reward
        self.sampling, self.group_size, self.schedule = sampling, group_size, schedule
        self.verifier, self.verifier_weight = verifier, verifier_weight
        self.chunk_tokens = chunk_tokens  # the overlap scheduler may retune it between rollouts
        self.streams, self.stream_chunk = list(streams), stream_chunk
        self.judge = judge
        self._ahead: dict[str, asyncio.Task[None]] = {}  # the judge's prefill of each trajectory's sample, running
        self._open = asyncio.Event()  # cleared while paused: no trajectory starts or resumes decoding
        self._open.set()
        self._running: dict[str, str] = {}  # trajectory id -> its engine request in flight
        self._paused: set[str] = set()  # requests aborted by ``pause``, to be resumed
        self._cut: dict[str, asyncio.Event] = {}  # set once a paused request's trajectory has kept its tokens
        self._paused_at = 0.0  # when the last ``pause`` began
        self._live: dict[str, Trajectory] = {}  # trajectories not yet ended
        self._work: dict[str, KeptWork] = {}  # their decoding so far (what a checkpoint keeps)
        # each trajectory's decode / tool / verifier / paused spans; ``timeline`` False keeps none (a long evaluation)
        self.timeline = Timeline(record=timeline)

    async def pause(self) -> int:
        """Stop decoding everywhere: requests in flight are aborted and keep their tokens (returns once each has
        kept them); returns how many.

        A trajectory inside a tool call finishes the call (its result is kept) and waits
        before its next turn; ``resume`` lets every trajectory continue where it stopped,
        re-prefilling its prefix under the weights of that time.
        """
        self._open.clear()
        self._paused_at = now()
        self.carry_over()
        running = list(self._running.values())
        self._paused.update(running)
        self._cut.update((request, asyncio.Event()) for request in running)
        cut = [self._cut[request].wait() for request in running]
        for request in running:
            await self.engine.abort(request)
        await asyncio.gather(*cut)
        return len(running)

    def carry_over(self) -> None:
        """Every trajectory not yet ended is carried over to the next step (counted in its ``deferred_steps``)."""
        for traj in self._live.values():
            traj.deferred_steps += 1

    def resume(self) -> None:
        self._open.set()

    def start_group(self, sample: Sample, tag: str, seed: int,
                    kept: Sequence[KeptWork | Trajectory | BaseException] = ()) -> list[asyncio.Task[Trajectory]]:
        """The ``group_size`` trajectories of ``sample`` as tasks, each rewarded when it ends; with ``kept`` (a
        checkpoint's), each goes on from its kept work, or is the trajectory that had already ended."""
        if kept and len(kept) != self.group_size:
            raise ValueError(f"sample {sample.id!r}: {len(kept)} kept trajectories for groups of {self.group_size}")
        if not kept:
            return [asyncio.create_task(self._trajectory(sample, f"{tag}-{k}", seed * 1_000_003 + k, True),
                                        name=f"{tag}-{k}") for k in range(self.group_size)]
        return [asyncio.create_task(self._trajectory(sample, work.traj_id, seed * 1_000_003 + k, True, work)
                                    if isinstance(work, KeptWork) else _ended(work), name=_name(work))
                for k, work in enumerate(kept)]

    def kept(self, task: asyncio.Task[Trajectory]) -> KeptWork | Trajectory | BaseException:
        """What a checkpoint keeps of one of ``start_group``'s tasks: the trajectory (or error) it ended with, or a
        copy of its decoding so far (its turns, and the tokens of the current one that a pause cut off; a request
        still decoding keeps those from before its last pause)."""
        if task.done() and not task.cancelled():
            return task.exception() or task.result()
        traj_id = task.get_name()
        work, traj = self._work.get(traj_id, KeptWork(traj_id)), self._live.get(traj_id)
        return KeptWork(traj_id, list(work.turns), work.partial, traj.deferred_steps if traj else 0)

    async def rollout(self, samples: Sequence[Sample], seed: int, tag: str = "r") -> RolloutResult:
        """One rollout: every sample ``group_size`` times. ``seed`` makes the sampling reproducible."""
        start = now()
        result = RolloutResult([])
        jobs = [(s, f"{tag}-{i}-{k}") for i, s in enumerate(samples) for k in range(self.group_size)]
        rewarded = self.schedule != "sync"
        outcomes = await asyncio.gather(
            *(self._trajectory(sample, traj_id, seed * 1_000_003 + n, rewarded)
              for n, (sample, traj_id) in enumerate(jobs)),
            return_exceptions=True)
        generated = now()
        by_sample: dict[int, list[Trajectory | BaseException]] = {}
        for n, outcome in enumerate(outcomes):
            by_sample.setdefault(n // self.group_size, []).append(outcome)
        if not rewarded:
            whole = [i for i, members in by_sample.items() if not any(isinstance(m, BaseException) for m in members)]
            scored = await asyncio.gather(*(self._reward_or_error(m, samples[i])  # type: ignore[arg-type]
                                            for i in whole for m in by_sample[i]))
            for k, i in enumerate(whole):
                by_sample[i] = scored[k * self.group_size: (k + 1) * self.group_size]
            for member in (m for i, members in by_sample.items() if i not in whole for m in members):
                if isinstance(member, Trajectory):  # a broken group's ended members are never rewarded
                    self._drop_ahead(member.id)
        for i, sample in enumerate(samples):
            result.add(sample, by_sample[i])
        end = now()
        result.seconds = Seconds(wall=end - start, generate=generated - start, reward=end - generated)
        return result

    async def _trajectory(self, sample: Sample, traj_id: str, seed: int, reward_now: bool,
                          kept: KeptWork | None = None) -> Trajectory:
        episode = self.env.reset(sample, traj_id)
        traj = episode.trajectory
        feed = VerifierFeed(self.verifier, traj_id, self.chunk_tokens, self.timeline) \
            if self.verifier is not None and reward_now else None
        streamed = [StreamedFeed(sink, traj_id, self.stream_chunk) for sink in self.streams]
        feeds: list[Feed] = [*([feed] if feed is not None else []), *streamed]
        traj.timings = Timings()
        start = now()
        if self.judge is not None and self.judge.cfg.ahead:  # the sample's part of its prompt, while the policy decodes
            self._ahead[traj_id] = asyncio.create_task(self.judge.ahead(traj_id, sample.question, sample.answers))
        self._live[traj_id] = traj
        work = self._work[traj_id] = KeptWork(traj_id)
        try:
            turn = 0
            if kept is not None:
                traj.deferred_steps = kept.deferred_steps
                for completion in kept.turns:  # the finished turns again: their tools rebuild the observations
                    work.turns.append(completion)
                    await episode.step(completion)
                    turn += 1
            while not episode.done:
                for each in feeds:
                    each.catch_up(traj)
                await self._wait_if_paused(traj)
                head = kept.partial if kept is not None and turn == len(kept.turns) else None
                completion = await self._turn(traj, _with_seed(self.sampling, seed * 64 + turn), f"{traj_id}/t{turn}",
                                              feeds, head)
                work.turns.append(completion)
                work.partial = None
                t1 = now()
                await episode.step(completion)
                t2 = now()
                traj.timings.env_s += t2 - t1
                if not episode.done:  # a tool ran (or its call was refused) and its observation was appended
                    self.timeline.add(traj_id, "tool", t1, t2)
                turn += 1
        except BaseException:
            for each in feeds:
                each.cancel()
            self._drop_ahead(traj_id)
            raise
        finally:
            self._live.pop(traj_id, None)
            self._work.pop(traj_id, None)
            await episode.close()
        traj.timings.wall_s = now() - start
        for each in streamed:
            each.seal(traj)
        if reward_now:
            await self._reward(traj, sample, feed)
        return traj

    async def _turn(self, traj: Trajectory, sampling: SamplingParams, request: str,
                    feeds: Sequence[Feed], head: Completion | None = None) -> Completion:
        """One policy turn. A request aborted by ``pause`` resumes after it from the tokens it had:
        the turn's tokens are the pre-pause ones followed by the post-resume ones, each with the
        logprob and weight version that produced it. ``head``: tokens a checkpoint kept of this
        turn, continued the same way."""
        ids: list[int] = list(head.token_ids) if head else []
        logprobs: list[float] = list(head.logprobs) if head else []
        versions: list[int] = list(head.versions) if head else []
        if head:
            for feed in feeds:
                feed.tokens(head.token_ids)
        part = 1 if head else 0
        while True:
            rid = request if part == 0 else f"{request}/resumed-{part}"
            params = continued(sampling, ids, part)
            self._running[traj.id] = rid
            t0 = now()
            self.timeline.begin(traj.id, "decode", t0)
            try:
                try:
                    stream = self.engine.generate(traj.token_ids + ids, traj.images, params, rid)
                    piece = await collect(rid, _tap(stream, feeds) if feeds else stream)
                finally:
                    self._running.pop(traj.id, None)
                    paused = rid in self._paused
                    self._paused.discard(rid)
                    t1 = min(now(), self._paused_at) if paused else now()
                    traj.timings.decode_s += t1 - t0
                    self.timeline.finish(traj.id, t1)
                ids += piece.token_ids
                logprobs += piece.logprobs
                versions += piece.versions
                turn = Completion(request, tuple(ids), tuple(logprobs), tuple(versions), piece.finish_reason)
                if piece.finish_reason != "abort" or not paused:
                    return turn
                self._work[traj.id].partial = turn
            finally:
                if paused:  # ``pause`` waits for this: the request's tokens are where a checkpoint finds them
                    self._cut.pop(rid).set()
            await self._wait_if_paused(traj, since=t1)
            part += 1

    async def _wait_if_paused(self, traj: Trajectory, since: float | None = None) -> None:
        """Wait for ``resume``; the trajectory counts as paused from ``since`` (its request's abort) or now."""
        if since is None and self._open.is_set():
            return
        t0 = now() if since is None else since
        await self._open.wait()
        t1 = now()
        traj.timings.paused_s += t1 - t0
        self.timeline.add(traj.id, "paused", t0, t1)

    async def _reward(self, traj: Trajectory, sample: Sample, feed: VerifierFeed | None = None) -> None:
        """The rule-based reward of the final answer, mixed with the judge's and then the verifier's verdicts where
        there are ones."""
        t0 = now()
        try:
            text = score_trajectory(traj, sample, self.tokenizer, self.reward)
            if self.judge is not None:
                ahead = self._ahead.pop(traj.id, None)
                if ahead is not None:
                    await ahead
                mix_judgement(traj, await self.judge.judge(traj.id, sample.question, sample.answers, text),
                              self.judge.cfg.weight)
        finally:
            self._drop_ahead(traj.id)
        if self.verifier is not None:
            feed = feed or VerifierFeed(self.verifier, traj.id, 0, self.timeline)
            try:
                verdict = await feed.finish(traj)
            except BaseException:
                feed.cancel()
                raise
            mix_verdict(traj, verdict, self.verifier_weight)
        traj.timings.reward_s = now() - t0

    def _drop_ahead(self, traj_id: str) -> None:
        """Stop the judge's prefill for a trajectory that will not be judged (or has been)."""
        ahead = self._ahead.pop(traj_id, None)
        if ahead is not None:
            ahead.cancel()

    async def _reward_or_error(self, traj: Trajectory, sample: Sample) -> Trajectory | Exception:
        try:
            await self._reward(traj, sample)
        except Exception as e:  # a broken reward drops this group, counted, and the run goes on
            return e
        return traj


async def _ended(outcome: Trajectory | BaseException) -> Trajectory:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _name(outcome: Trajectory | BaseException) -> str:
    return outcome.id if isinstance(outcome, Trajectory) else f"ended with {type(outcome).__name__}"


async def _tap(stream: AsyncIterator[Delta], feeds: Sequence[Feed]) -> AsyncIterator[Delta]:
    """``stream`` unchanged, with each delta's tokens handed to ``feeds`` on the way."""
    async for delta in stream:
        for feed in feeds:
            feed.tokens(delta.token_ids)
        yield delta


def score_trajectory(traj: Trajectory, sample: Sample, tokenizer: Any, reward: Reward) -> str:
    """Reward the final policy turn's text (decoded for the reward only; training keeps the ids); returns the text.
    A reward that takes ``context`` also gets the question, the sample's metadata and the trajectory's tool use."""
    last = next((s for s in reversed(traj.segments) if s.kind == "policy"), None)
    text = tokenizer.decode(last.token_ids, skip_special_tokens=True) if last is not None else ""
    if takes_context(reward):
        context = RewardContext(sample.question, sample.metadata, traj.tool_stats(), traj.turns, traj.finish_reason)
        score = reward(text, sample.answers, context=context)  # type: ignore[call-arg]
    else:
        score = reward(text, sample.answers)
    traj.reward, traj.reward_parts = score.total, dict(score.parts)
    return text


def takes_context(reward: Reward) -> bool:
    """Whether ``reward`` has a ``context`` parameter (``RewardContext``)."""
    try:
        return "context" in inspect.signature(reward).parameters
    except (TypeError, ValueError):  # a builtin or a callable without a signature: a plain reward
        return False


def mix_judgement(traj: Trajectory, judgement: Judgement, weight: float) -> None:
    """total = (1 - weight) x rule-based + weight x the judge's score; its parts recorded."""
    assert traj.reward is not None
    traj.reward = (1.0 - weight) * traj.reward + weight * judgement.score
    traj.reward_parts |= judgement.parts()


def mix_verdict(traj: Trajectory, verdict: Verdict, weight: float) -> None:
    """total = (1 - weight) x rule-based + weight x P(Yes); the verdict and its prefill split are recorded."""
    assert traj.reward is not None
    traj.reward = (1.0 - weight) * traj.reward + weight * verdict.score
    traj.reward_parts["verifier"] = verdict.score
    traj.timings = replace(traj.timings, verifier_early_tokens=verdict.early_tokens,
                           verifier_late_tokens=verdict.late_tokens, verifier_finish_s=verdict.finish_s)


def _with_seed(sampling: SamplingParams, seed: int) -> SamplingParams:
    return replace(sampling, seed=seed % (2**31))
