"""What every trajectory was doing when: decoding, in a tool, being judged, paused; and the trainer.

The rollout manager records one ``Span`` per phase of each trajectory (its row), and the
training loop the trainer's update and weight sync (the row ``trainer``) and each step's
start. From the same spans come the step's engine figures (``engine_figures``) and, when a
run asks for it (``log.timeline``), a Chrome trace (``timeline.json``: open it in
https://ui.perfetto.dev) and a Gantt chart (``timeline.png``), so a person can see where
the engine sat idle and what the overlap scheduler hid.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from vlrl.clock import now

# phase -> colour; a row's verifier spans are drawn as a thin band (they run beside its decoding)
PHASES = {"decode": "#1f77b4", "tool": "#ff7f0e", "verifier": "#2ca02c", "paused": "#d62728",
          "update": "#9467bd", "sync": "#8c564b"}
TRAINER = "trainer"


@dataclass(frozen=True)
class Span:
    """``track`` (a trajectory id, or ``trainer``) was in ``phase`` from ``start`` to ``end`` (``vlrl.clock.now`` s)."""

    track: str
    phase: str
    start: float
    end: float


@dataclass
class Timeline:
    """The spans and step marks of a run (or of its last step, when ``prune`` keeps it short)."""

    spans: list[Span] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)  # (``vlrl.clock.now`` s, label), e.g. step starts
    record: bool = True  # False: keep nothing (an evaluation's thousands of trajectories, never drawn)
    open: dict[str, tuple[str, float]] = field(default_factory=dict)  # track -> (phase, start) of a span still going

    def add(self, track: str, phase: str, start: float, end: float) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {sorted(PHASES)}")
        if self.record:
            self.spans.append(Span(track, phase, start, end))

    def begin(self, track: str, phase: str, start: float) -> None:
        """``track`` enters ``phase``; until ``finish``, the engine's figures count it as running."""
        if self.record:
            self.open[track] = (phase, start)

    def finish(self, track: str, end: float) -> None:
        """The span ``begin`` opened on ``track`` ends at ``end``."""
        if track in self.open:
            phase, start = self.open.pop(track)
            self.add(track, phase, start, end)

    @contextmanager
    def span(self, track: str, phase: str) -> Iterator[None]:
        """Record the ``with`` block as ``track`` in ``phase`` (also when it raises or is cancelled)."""
        start = now()
        try:
            yield
        finally:
            self.add(track, phase, start, now())

    def mark(self, label: str, at: float | None = None) -> None:
        if self.record:
            self.marks.append((now() if at is None else at, label))

    def prune(self, before: float) -> None:
        """Forget the spans and marks that ended before ``before`` (a run that records no timeline)."""
        self.spans = [s for s in self.spans if s.end >= before]
        self.marks = [m for m in self.marks if m[0] >= before]

    def engine_figures(self, start: float, close: float, end: float, capacity: int) -> dict[str, float]:
        """The policy engine's use in one step, from the decode spans.

        ``engine_busy_fraction``: the share of the step [start, end] with at least one policy
        request on the engine (the update and weight sync count as idle).
        ``bubble_ratio``: the share of the engine's batch slots (``capacity``, its
        ``max_num_seqs``) left empty during the rollout [start, close], while the step's
        trajectories were still being produced: 1 - mean(min(requests, capacity)) / capacity.
        The long tail, tool waits and an end-of-rollout reward all empty slots; a slot
        counts in proportion to the time it stood empty.
        """
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not start <= close <= end:
            raise ValueError(f"need start <= close <= end, got {start}, {close}, {end}")
        busy = under = 0.0
        running, last = 0, start
        for at, change in [*self._requests(start, end), (end, 0)]:
            if running >= 1:
                busy += at - last
            under += max(min(at, close) - last, 0.0) * max(capacity - running, 0) / capacity
            running, last = running + change, at
        return {"engine_busy_fraction": busy / max(end - start, 1e-9),
                "bubble_ratio": under / max(close - start, 1e-9) if close > start else 0.0}

    def write(self, folder: Path) -> tuple[Path, Path]:
        """``timeline.json`` (Chrome trace) and ``timeline.png`` (Gantt) in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        trace, png = folder / "timeline.json", folder / "timeline.png"
        trace.write_text(json.dumps(self.chrome_trace()))
        self._gantt(png)
        return trace, png

    def chrome_trace(self) -> dict[str, Any]:
        """The spans in the Chrome trace event format: a thread per row (a trajectory's verifier
        spans on a thread of their own, since they overlap its decoding), a counter of the
        policy requests on the engine, and the step marks as global instants."""
        t0 = self._origin()
        tids: dict[str, int] = {}
        events: list[dict[str, Any]] = []
        for s in sorted(self.spans, key=lambda s: s.start):
            thread = f"{s.track} verifier" if s.phase == "verifier" else s.track
            if thread not in tids:
                tids[thread] = len(tids) + 1
                events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": tids[thread],
                               "args": {"name": thread}})
            events.append({"ph": "X", "name": s.phase, "cat": s.phase, "pid": 1, "tid": tids[thread],
                           "ts": _us(s.start - t0), "dur": _us(s.end - s.start), "args": {"track": s.track}})
        running = 0
        for at, change in self._requests(-float("inf"), float("inf")):
            running += change
            events.append({"ph": "C", "name": "engine requests", "pid": 1, "ts": _us(at - t0),
                           "args": {"requests": running}})
        events += [{"ph": "i", "s": "g", "name": label, "pid": 1, "tid": 0, "ts": _us(at - t0)}
                   for at, label in self.marks]
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def _requests(self, lo: float, hi: float) -> list[tuple[float, int]]:
        """(time, +1 or -1) as policy requests reach and leave the engine, clipped to [lo, hi], in order (a request
        still decoding runs to ``hi``)."""
        going = [Span(track, phase, start, hi) for track, (phase, start) in self.open.items()]
        decode = [s for s in [*self.spans, *going] if s.phase == "decode" and s.end > lo and s.start < hi]
        return sorted([(max(s.start, lo), 1) for s in decode] + [(min(s.end, hi), -1) for s in decode])

    def _origin(self) -> float:
        return min([s.start for s in self.spans] + [at for at, _ in self.marks], default=0.0)

    def _gantt(self, path: Path) -> None:
        t0 = self._origin()
        first: dict[str, float] = {}
        for s in self.spans:
            first[s.track] = min(first.get(s.track, s.start), s.start)
        rows = [TRAINER] * (TRAINER in first) + sorted((t for t in first if t != TRAINER), key=first.__getitem__)
        row = {track: k for k, track in enumerate(rows)}
        fig = Figure(figsize=(12, min(2.5 + 0.12 * len(rows), 40)))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for s in self.spans:
            thin = s.phase == "verifier"
            y = row[s.track] + (0.15 if thin else -0.4)
            ax.broken_barh([(s.start - t0, max(s.end - s.start, 1e-4))], (y, 0.25 if thin else 0.8),
                           facecolors=PHASES[s.phase], linewidth=0)
        for at, label in self.marks:
            ax.axvline(at - t0, color="#333333", linestyle="--", linewidth=0.8)
            ax.text(at - t0, -0.9, label, fontsize=7, va="bottom")
        ax.set_ylim(len(rows) - 0.4, -1.2)
        ax.set_yticks(range(len(rows)), rows if len(rows) <= 80 else [""] * len(rows), fontsize=6)
        ax.set_xlabel("seconds")
        ax.set_title("one row per trajectory; blank: ended, waiting for the batch to close", pad=22)
        ax.legend(handles=[Patch(color=c, label=p) for p, c in PHASES.items()], loc="lower center", fontsize=7,
                  ncol=len(PHASES), bbox_to_anchor=(0.5, 1.0), frameon=False)
        fig.savefig(path, dpi=110, bbox_inches="tight")


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 1)
