"""`vlrl eval`: N trajectories per question through the training's rollout manager, judged and written as they come.

Per question: N sampled trajectories (and one greedy) run by ``RolloutManager`` with the
same environment, tools and reward as training, so tool use is evaluated exactly as it
was trained. Each sampled answer is then

- scored by the reward (right or wrong) and put in a cluster of answers the reward
  treats as the same (for the votes of ``vlrl.eval.metrics``);
- judged by the policy itself, with the image(s) and with every image removed from its
  input (``VisionInputs.strip_images``), and by an external verifier if one is given;
  with ``judge.generate``, also checked in writing by the policy and / or the external
  verifier, a verdict parsed from what it wrote (``vlrl.eval.written``);
- followed, with ``second_look``, by a user turn asking the policy to re-check it.

One JSON line per question goes to ``results.jsonl`` as soon as its batch ends; a run
started again with the same settings skips the questions already there, so an
interrupted evaluation resumes where it stopped. ``vlrl.eval.report`` turns the lines
into the figures.

The N samples of a question share its prompt: the HF engine reuses the prompt's KV
across them, vLLM its prefix cache. The verifier's calls for all samples of a batch of
questions are in flight together, so an engine that batches (vLLM) scores them in batches.
"""

from __future__ import annotations

import asyncio
import json
import time
from itertools import islice
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoTokenizer

from vlrl.answer import extract_answer, has_final_answer
from vlrl.config import EvalConfig, to_dict
from vlrl.distributed import cluster as ray_cluster
from vlrl.distributed import open_engine
from vlrl.engines.base import Engine, check_model_dir
from vlrl.env import make_env
from vlrl.eval.heldout import answer_accuracy, trajectory_accuracy
from vlrl.eval.judges import open_model_verifier, open_reward_judge
from vlrl.eval.metrics import cluster_answers
from vlrl.eval.report import build_report, write_report
from vlrl.eval.revisions import excerpt, find_revisions
from vlrl.eval.written import Written, WrittenVerifier, prompt_text
from vlrl.registry import resolve
from vlrl.rewards.judge import AnswerJudge
from vlrl.rewards.verifier import END_OF_TURN, FollowUp, Verdict, Verifier, check_same_tokenizer
from vlrl.rollout.manager import Reward, RolloutManager, RolloutResult
from vlrl.runlog import write_trajectory
from vlrl.task import open_task
from vlrl.types import Sample, Trajectory
from vlrl.vision import VisionInputs

RESULTS = "results.jsonl"
# settings that change a question's results: a run resumes only into a folder made with the same ones
RESULT_KEYS = ("model", "engine", "env", "task", "seed", "samples", "greedy", "max_new_tokens", "temperature",
               "top_p", "top_k", "judge", "reward_judge", "second_look", "second_look_prompt", "revision_phrases")


async def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run (or resume) ``cfg`` and write its report; returns the report."""
    model_dir = check_model_dir(cfg.model.path)
    for folder in (cfg.judge.external, "" if cfg.reward_judge.model == "policy" else cfg.reward_judge.model):
        if folder:
            check_model_dir(folder)
    source, reward_name = open_task(cfg.task, cfg.seed)
    reward = resolve("reward", reward_name)
    questions = _questions(source, cfg)
    out = Path(cfg.out)
    done = _open_results(out, cfg)
    todo = [i for i in range(len(questions)) if i not in done]
    print(f"eval: {len(questions)} questions x {cfg.samples} samples, {len(done)} already in {out / RESULTS}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if cfg.judge.external:
        check_same_tokenizer(cfg.judge.external, tokenizer, "judge.external")
    vision = VisionInputs(model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    start = time.perf_counter()
    if todo:
        with ray_cluster(cfg.distributed.backend, cfg.distributed.address):  # Ray only for backend ray
            await _run(cfg, todo, questions, tokenizer, vision, reward, out, len(done), start)
    seconds = time.perf_counter() - start
    records = [r for r in read_results(out) if r["index"] < len(questions)]
    report = build_report(records, cfg, seconds)
    write_report(out, report)
    return report


async def _run(cfg: EvalConfig, todo: list[int], questions: list[Sample], tokenizer: Any, vision: VisionInputs,
               reward: Any, out: Path, done: int, start: float) -> None:
    """Answer the questions ``todo`` in batches, appending each batch's records to the results."""
    engine = await open_engine(cfg.model, cfg.engine, cfg.distributed)
    external = external_engine = grader_engine = None
    try:
        j = cfg.judge
        if j.external:
            external, external_engine = await open_model_verifier(j.external, "judge.external", j, cfg.model,
                                                                  tokenizer, cfg.engine, cfg.distributed)
        grader, grader_engine = await open_reward_judge(cfg.reward_judge, engine, tokenizer, cfg.model, cfg.engine,
                                                        cfg.distributed)
        async with make_env(cfg.env, tokenizer, vision) as env:
            run = _Evaluation(cfg, engine, external, env, tokenizer, vision, reward, out, grader)
            for at in range(0, len(todo), cfg.batch_questions):
                batch = todo[at: at + cfg.batch_questions]
                began = time.perf_counter()
                records = await asyncio.gather(*(run.question(i, questions[i]) for i in batch))
                share = (time.perf_counter() - began) / len(batch)  # for the throughput
                with (out / RESULTS).open("a") as f:
                    for record in records:
                        record["wall_share_s"] = share
                        f.write(json.dumps(record) + "\n")
                print(f"eval: {done + at + len(batch)}/{len(questions)} questions, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
    finally:
        await engine.close()
        for own in (external_engine, grader_engine):
            if own is not None:
                await own.close()


def _questions(source: Any, cfg: EvalConfig) -> list[Sample]:
    questions = list(islice(source, cfg.questions))
    for sample in questions:
        if not sample.answers or not all(a.strip() for a in sample.answers):
            raise ValueError(f"task {cfg.task.name!r}: question {sample.id!r} has no answer to score against "
                             f"(answers {list(sample.answers)}); evaluation needs a labelled dataset")
    if len(questions) < cfg.questions:
        raise ValueError(f"questions is {cfg.questions} but task {cfg.task.name!r} has {len(questions)}")
    return questions


def _open_results(out: Path, cfg: EvalConfig) -> set[int]:
    """The question indexes already in ``out``; ValueError if they were made with other settings."""
    settings = {k: v for k, v in to_dict(cfg).items() if k in RESULT_KEYS}
    kept = out / "settings.yaml"
    if kept.is_file():
        before = yaml.safe_load(kept.read_text())
        if before != settings:
            changed = sorted(k for k in RESULT_KEYS if before.get(k) != settings.get(k))
            raise ValueError(f"{out} holds results made with other settings ({', '.join(changed)} differ); "
                             "choose another out or remove the folder")
    out.mkdir(parents=True, exist_ok=True)
    kept.write_text(yaml.safe_dump(settings, sort_keys=False))
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return {r["index"] for r in read_results(out)}


def read_results(out: Path) -> list[dict[str, Any]]:
    """The lines of ``results.jsonl``. A line cut off by a killed run is dropped from the file (its
    question runs again)."""
    path = out / RESULTS
    if not path.is_file():
        return []
    records, lines = [], path.read_text().splitlines()
    for line_no, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"eval: {path}:{line_no} is cut off; its question will run again")
    if len(records) < len(lines):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


class _Evaluation:
    """What every question needs: the engines, the env's rollout managers, the verifiers, the reward."""

    def __init__(self, cfg: EvalConfig, engine: Engine, external: Verifier | None, env: Any, tokenizer: Any,
                 vision: VisionInputs, reward: Reward, out: Path, grader: AnswerJudge | None = None):
        self.cfg, self.engine, self.tokenizer, self.vision, self.reward, self.out = (
            cfg, engine, tokenizer, vision, reward, out)
        self.sampling = cfg.sampling()
        self.sampler = RolloutManager(engine, env, tokenizer, reward, self.sampling, cfg.samples, timeline=False,
                                      judge=grader)
        self.greedy = RolloutManager(engine, env, tokenizer, reward, cfg.sampling(temperature=0.0, top_p=1.0, top_k=0),
                                     1, timeline=False, judge=grader) if cfg.greedy else None
        j = cfg.judge
        self.self_judge = Verifier(engine, tokenizer, j.question, j.yes, j.no) if j.policy else None
        self.external_judge = external
        text = prompt_text(j.generate_prompt, j.generate_marker, j.generate_yes, j.generate_no) if j.generate else ""
        writing = cfg.sampling(max_tokens=j.generate_max_tokens, temperature=j.generate_temperature, top_p=1.0, top_k=0)
        writers = {"self": (engine, None), "external": (external.engine, external.image_runs) if external else None}
        self.writers = {f"{who}gen": WrittenVerifier(writers[who][0], tokenizer, text, writing, j.generate_marker,
                                                    j.generate_yes, j.generate_no, writers[who][1])
                        for who in j.generate}  # "selfgen", "externalgen"
        self.second_look = FollowUp(tokenizer, cfg.second_look_prompt) if cfg.second_look else None
        self.written = {kind: _count_dirs(out / "transcripts" / kind) for kind in ("right", "wrong")}

    async def question(self, index: int, sample: Sample) -> dict[str, Any]:
        """One question's line of ``results.jsonl``."""
        start = time.perf_counter()
        jobs = [self.sampler.rollout([sample], seed=index, tag=f"q{index}")]
        if self.greedy is not None:
            jobs.append(self.greedy.rollout([sample], seed=index, tag=f"q{index}-greedy"))
        rolled = await asyncio.gather(*jobs)
        trajs = rolled[0].groups[0].trajectories if rolled[0].groups else []
        records = await asyncio.gather(*(self.judge(t, sample) for t in trajs))
        if not trajs:  # the group failed: its samples count as wrong answers, with the reason
            records = [_dropped(rolled[0]) for _ in range(self.cfg.samples)]
        clusters = cluster_answers([r["answer"] for r in records], lambda a, b: same_answer(self.reward, a, b))
        for record, cluster in zip(records, clusters):
            record["cluster"] = cluster
        line: dict[str, Any] = {"index": index, "id": sample.id, "task": sample.task, "answers": list(sample.answers),
                                "samples": records, "dropped": dict(rolled[0].dropped),
                                "errors": rolled[0].errors}
        if self.greedy is not None:
            greedy = rolled[1].groups[0].trajectories[0] if rolled[1].groups else None
            line["greedy"] = outcome(greedy, self.tokenizer) if greedy is not None else _dropped(rolled[1])
        line["seconds"] = time.perf_counter() - start
        for traj, record in zip(trajs, records):
            self.keep_transcript(traj, record)
        return line

    async def judge(self, traj: Trajectory, sample: Sample) -> dict[str, Any]:
        """The trajectory's outcome, its verifiers' scores, its answer revisions."""
        record = outcome(traj, self.tokenizer)
        answer, ids = record["answer"], traj.token_ids
        calls: dict[str, Any] = {}
        if self.self_judge is not None:
            calls["self"] = self.self_judge.score(f"{traj.id}/self", ids, traj.images)
            calls["self_noimage"] = self.self_judge.score(f"{traj.id}/self-noimage", self.vision.strip_images(ids), [])
            for ablation in self.cfg.judge.ablations:
                seen_ids, seen = ablated(traj, len(sample.images), ablation, answer, self.vision, self.tokenizer)
                calls[f"self_{ablation}"] = self.self_judge.score(f"{traj.id}/self-{ablation}", seen_ids, seen)
        if self.external_judge is not None:
            calls["external"] = self.external_judge.score(f"{traj.id}/external", ids, traj.images)
        for name, writer in self.writers.items():
            calls[name] = writer.verify(f"{traj.id}/{name}", ids, traj.images)
        if self.second_look is not None:
            calls["second_look"] = self.look_again(traj)
        done = dict(zip(calls, await asyncio.gather(*calls.values(), return_exceptions=True)))
        for name, value in done.items():  # a verifier without a Yes/No probability stops the run, with its message
            if isinstance(value, BaseException) and name != "second_look" and not (
                    name in self.writers and isinstance(value, ValueError)):  # a check that does not fit: counted
                raise value
        judged = {name: value for name, value in done.items()
                  if name != "second_look" and not isinstance(value, BaseException)}
        record["scores"] = {name: value.score for name, value in judged.items()}
        record["verify_tokens"] = {name: verify_tokens(value) for name, value in judged.items()}
        if self.writers:
            record["written"] = {name: {"verdict": "error", "tokens": 0} if isinstance(done[name], BaseException)
                                 else {"verdict": done[name].verdict, "tokens": done[name].tokens}
                                 for name in self.writers}
        if record["stated"]:  # an answer stated before a tool result, then the final one
            record["tool_revision"] = revision(self.reward, record["stated"][0], answer, sample)
        turns = policy_turns(traj, self.tokenizer)
        found = find_revisions(turns, traj.actions, self.cfg.revision_phrases,
                               lambda a, b: same_answer(self.reward, a, b))
        if found["kinds"]:  # whether its first answer was right (its last is the record's), and what it wrote
            found |= {"before": _correct(self.reward, found["first"], sample), "text": excerpt(turns)}
        record["revision"] = found
        if "second_look" in done:
            revised = done["second_look"]
            if isinstance(revised, ValueError):  # e.g. the trajectory already fills the context: counted
                record["second_look"] = {"error": str(revised)}
            elif isinstance(revised, BaseException):
                raise revised
            else:
                record["second_look"] = revision(self.reward, answer, revised, sample) | {"answer": revised}
        return record

    async def look_again(self, traj: Trajectory) -> str | None:
        """The answer the policy gives when asked to re-check its own (None: it stated none)."""
        ids = self.second_look.after(traj.token_ids)  # type: ignore[union-attr]
        reply = await self.engine.complete(ids, traj.images, self.sampling, f"{traj.id}/second-look")
        text = self.tokenizer.decode(reply.token_ids, skip_special_tokens=True)
        return extract_answer(text).strip() or None if has_final_answer(text) else None

    def keep_transcript(self, traj: Trajectory, record: dict[str, Any]) -> None:
        kind = "right" if record["correct"] >= 1.0 else "wrong"
        if self.written[kind] >= self.cfg.transcripts:
            return
        self.written[kind] += 1
        traj.reward_parts |= {f"judge_{k}": round(v, 4) for k, v in record["scores"].items()}
        write_trajectory(traj, self.tokenizer, self.out / "transcripts" / kind / traj.id.replace("/", "_"))


def ablated(traj: Trajectory, asked: int, ablation: str, answer: str | None, vision: VisionInputs,
            tokenizer: Any) -> tuple[list[int], list[Any]]:
    """What the policy's P(Yes) reads in ``ablation``, ids and images: the trajectory with only the question's
    ``asked`` images ("original") or only the tools' ("edited"; none when no tool made one), or the question
    followed by nothing but ``FINAL ANSWER: <answer>`` ("answer_only")."""
    if ablation == "answer_only":
        stated = tokenizer.encode(f"FINAL ANSWER: {answer or ''}", add_special_tokens=False)
        prompt = traj.segments[0]
        return [*prompt.token_ids, *stated, tokenizer.convert_tokens_to_ids(END_OF_TURN)], list(prompt.images)
    keep = [(k < asked) == (ablation == "original") for k in range(len(traj.images))]
    return vision.strip_images(traj.token_ids, keep), [im for im, kept in zip(traj.images, keep) if kept]


def verify_tokens(judged: Verdict | Written) -> int:
    """The tokens a verification cost: those its engine read anew (the question or check prompt, and whatever of
    the trajectory its cache did not hold: all of it for a verifier of its own) and those it wrote."""
    if isinstance(judged, Written):
        return judged.read_tokens + judged.tokens
    return judged.early_tokens + judged.late_tokens


def policy_turns(traj: Trajectory, tokenizer: Any) -> list[str]:
    """The text of each of the trajectory's policy turns."""
    return [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in traj.segments if s.kind == "policy"]


def outcome(traj: Trajectory, tokenizer: Any) -> dict[str, Any]:
    """What a trajectory answered (as the reward read it) and how it got there; ``stated``: the answers
    its earlier turns gave before a tool result."""
    turns = policy_turns(traj, tokenizer)
    answer = extract_answer(turns[-1]).strip() if turns else ""
    stats = traj.tool_stats()
    return {"answer": answer or None, "correct": trajectory_accuracy(traj),
            "tool_calls": stats["tool_calls"], "tool_errors": stats["tool_errors"], "turns": traj.turns,
            "finish": traj.finish_reason,
            "policy_tokens": sum(len(s.token_ids) for s in traj.segments if s.kind == "policy"),
            "stated": [extract_answer(t).strip() for t in turns[:-1] if has_final_answer(t)]}


def same_answer(reward: Reward, answer: str, other: str) -> bool:
    """Whether ``reward`` accepts ``answer`` for the accepted answer ``other``: the votes' equivalence."""
    return answer_accuracy(reward, answer, [other]) >= 1.0


def revision(reward: Reward, before: str | None, after: str | None, sample: Sample) -> dict[str, Any]:
    """Whether the answer changed (one kept or withdrawn is no change), and whether it was right before / after."""
    changed = after is not None and (before is None or not same_answer(reward, after, before))
    return {"changed": changed, "before": _correct(reward, before, sample),
            "after": _correct(reward, after if changed else before, sample)}


def _correct(reward: Reward, answer: str | None, sample: Sample) -> float:
    if answer is None:
        return 0.0
    return answer_accuracy(reward, answer, sample.answers)


def _dropped(result: RolloutResult) -> dict[str, Any]:
    """The record of a sample whose trajectory failed: no answer, wrong, and why."""
    return {"answer": None, "correct": 0.0, "dropped": ", ".join(sorted(result.dropped)) or "dropped"}


def _count_dirs(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else 0
