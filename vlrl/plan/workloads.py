"""What the twin's trajectories look like: a pool of shapes (prompt tokens, tokens of each policy turn,
observation tokens) to draw each simulated trajectory from.

From a finished run (``lengths.jsonl``, what its trained trajectories were, by id: a twin
of that run's config gives each trajectory the shape it had), or from a
named workload of `vlrl bench overlap`: there the shapes follow its teacher's
distribution (the shape a warm-started policy imitates; a measured run is the better
source, since a small model imitates a tail only roughly).

Either can be scaled to another turn cap (``Workload.scaled``): the shape kept (cap / median
and the tail), the tokens in proportion. A GPU projection uses it to turn the tiny tokenizer's
lengths into a recipe's (a 1,024-token cap to verl's 2,048, or to a long-CoT run's 16k).
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from vlrl.config import TrainConfig, load_config
from vlrl.plan.engine import Script
from vlrl.registry import resolve

SENTENCE_TOKENS = 12  # the teacher's THOUGHT sentence in the tiny tokenizer
ANSWER_TOKENS = 8  # "FINAL ANSWER: X" and the end of the turn
TOOL_CALL_TOKENS = 24  # a brief focus-tool call


@dataclass(frozen=True)
class Workload:
    """Trajectory shapes to draw from, and the prompt and observation sizes they share on average."""

    turns: tuple[tuple[int, ...], ...]  # policy tokens of each turn, per trajectory
    prompt_tokens: int
    observation_tokens: int  # per tool observation
    max_tokens: int  # the turn cap the lengths were written under
    source: str
    # (trajectory id, its turns) of a run that recorded its ids: the twin, whose ids follow the recipe's, gives each
    # of them the shape it had there, so a replay faces the same work step by step
    known: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def script(self, seed: int = 0) -> Script:
        """Trajectory id -> its turns: a known id's own; any other always draws the same shape from ``turns``."""
        known = dict(self.known)

        def turns(traj_id: str) -> list[int]:
            if traj_id in known:
                return list(known[traj_id])
            return list(self.turns[zlib.crc32(f"{seed}/{traj_id}".encode()) % len(self.turns)])

        return turns

    def scaled(self, max_tokens: int) -> Workload:
        """These lengths under a turn cap of ``max_tokens``: every turn's tokens times ``max_tokens / self.max_tokens``
        (rounded, at least 1, at most the cap), so the distribution keeps its shape relative to its cap."""
        if max_tokens < 1:
            raise ValueError(f"a turn cap must be >= 1 token, got {max_tokens}")
        if max_tokens == self.max_tokens:
            return self
        factor = max_tokens / self.max_tokens

        def scale(turns: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(min(max(round(t * factor), 1), max_tokens) for t in turns)

        return replace(self, turns=tuple(scale(t) for t in self.turns),
                       known=tuple((traj, scale(t)) for traj, t in self.known), max_tokens=max_tokens,
                       source=f"{self.source}, its lengths x{factor:.3g} to a {max_tokens}-token cap")


def from_run(path: str | Path) -> Workload:
    """The trained trajectories of the run at ``path`` (its ``lengths.jsonl``, under its config's turn cap)."""
    file = Path(path) / "lengths.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: --lengths takes a run directory of `vlrl train`")
    cap = load_config(TrainConfig, Path(path) / "config.yaml").rollout.max_new_tokens
    steps = [json.loads(line) for line in file.read_text().splitlines()]
    shapes = [shape for step in steps for shape in step["trajectories"]]
    if not shapes:
        raise ValueError(f"{file}: no trained trajectory to draw lengths from")
    tool_turns = sum(len(turns) - 1 for _, turns, _ in shapes)
    known = tuple((traj_id, tuple(turns)) for step in steps
                  for traj_id, (_, turns, _) in zip(step.get("ids", ()), step["trajectories"]))
    return Workload(tuple(tuple(turns) for _, turns, _ in shapes),
                    round(sum(p for p, _, _ in shapes) / len(shapes)),
                    round(sum(o for _, _, o in shapes) / max(tool_turns, 1)), cap, str(file), known)


def named(name: str, prompt_tokens: int = 300, observation_tokens: int = 60, draws: int = 4096,
          seed: int = 0) -> Workload:
    """Shapes of the answers of `vlrl bench overlap`'s workload ``name``'s teacher (the registry's ``teacher``
    agent with the workload's arguments): a tool call as often as it makes one, then its THOUGHT and answer."""
    from vlrl.bench.overlap import WORKLOADS

    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}, or give --lengths RUN")
    args = yaml.safe_load(WORKLOADS[name].teacher)
    agent = resolve("agent", "teacher")(seed=seed, **args)
    rng = random.Random(seed)
    shapes = []
    for _ in range(draws):
        answer = SENTENCE_TOKENS * agent.thought_lines(rng) + ANSWER_TOKENS
        shapes.append((TOOL_CALL_TOKENS, answer) if rng.random() < agent.p_tool else (answer,))
    return Workload(tuple(shapes), prompt_tokens, observation_tokens, WORKLOADS[name].max_new_tokens,
                    f"workload {name}'s teacher {args}")
