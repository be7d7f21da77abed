"""Episodes played by a model-free agent: (environment, agent, sample) --> Episode, and its files on disk.

`vlrl env play` lets a user see what an environment does with well-formed and broken turns
before any model is involved; the warm start and the held-out figures play a teacher. An
agent is any object with ``act(episode) -> str`` (registry kind ``agent``); its text is
tokenized as the policy turn, closed by ``<|im_end|>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from vlrl.env import Env, Episode
from vlrl.types import Completion, Sample, Trajectory


def text_turn(tokenizer: Any, text: str, request_id: str = "agent") -> Completion:
    """A policy turn written as text: its ids closed by ``<|im_end|>``; no logprobs (0.0), version -1."""
    ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return Completion(request_id, tuple(ids), (0.0,) * len(ids), (-1,) * len(ids), "stop")


async def play_episode(env: Env, tokenizer: Any, agent: Any, sample: Sample, episode_id: str) -> Episode:
    """One episode of ``agent`` on ``sample``: its turns as text tokens (version -1), the env's observations."""
    episode = env.reset(sample, episode_id)
    try:
        while not episode.done:
            text = await asyncio.to_thread(agent.act, episode)
            await episode.step(text_turn(tokenizer, text))
    finally:
        await episode.close()
    return episode


async def play_agent(env: Env, tokenizer: Any, agent: Any, samples: Sequence[Sample], tag: str) -> list[Trajectory]:
    """The agent's trajectories on ``samples``, played concurrently."""
    episodes = await asyncio.gather(*(play_episode(env, tokenizer, agent, s, f"{tag}-{k}")
                                      for k, s in enumerate(samples)))
    return [e.trajectory for e in episodes]


def write_episode(episode: Episode, folder: Path) -> None:
    """transcript.md (messages with their images inline), image_K.png, trajectory.json."""
    folder.mkdir(parents=True, exist_ok=True)
    traj = episode.trajectory
    lines, k = [f"# {traj.id}", ""], 0
    for entry in episode.transcript:
        lines += [f"## {entry.role}", "", "```text", entry.text, "```", ""]
        for image in entry.images:
            k += 1
            image.save(folder / f"image_{k}.png")
            lines += [f"![image_{k}](image_{k}.png)", ""]
    lines.append(f"**finish:** {traj.finish_reason} · **answer:** {traj.answer!r}")
    (folder / "transcript.md").write_text("\n".join(lines) + "\n")
    record = {
        "id": traj.id, "sample_id": traj.sample_id, "finish_reason": traj.finish_reason, "answer": traj.answer,
        "turns": traj.turns, "tool_stats": traj.tool_stats(), "actions": [dataclasses.asdict(a) for a in traj.actions],
        "images": len(traj.images), "token_ids": traj.token_ids, "loss_mask": traj.loss_mask,
    }
    (folder / "trajectory.json").write_text(json.dumps(record))
