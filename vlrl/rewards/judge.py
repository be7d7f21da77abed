"""A model judge as a reward part: a model reads the question, the ground truth and the policy's extracted answer and
says whether they agree (VTool-R1 trains on this outcome reward, with Qwen2.5-7B-Instruct in v1 and Qwen3-4B in v2).

Unlike the verifier (``vlrl.rewards.verifier``: P(Yes) of a model that sees the trajectory but
never the ground truth), the judge sees the ground truth and nothing of the trajectory but its
final answer. Its prompt is a Jinja file (``judge.jinja`` by default) with ``question``,
``ground_truth``, ``answer``, ``yes`` and ``no``, sent as one user turn through the judge's own
chat template. Two ways to read it (``reward_judge.verdict``):

- ``generate``: the judge writes a reply (``temperature``, ``max_tokens``) and the last verdict
  mark in it counts (``<|YES|>`` -> 1, ``<|NO|>`` -> 0, VTool-R1's marks); a reply with neither
  scores 0 and is counted (``judge_unparsed``);
- ``p_yes``: P(yes) over the yes / no words as the reply's first token, a deterministic score.

A policy that stated no answer (no ``FINAL ANSWER:`` or ``\\boxed{}``) is not judged: it scores 0,
counted (``judge_unanswered``); verdict marks written into an answer are taken out of it before
the judge reads it. Everything in the prompt before the answer depends only on the
sample, so ``ahead`` prefills it while the policy decodes (the engine keeps it as a prefix); the
ids are the prefix's and the rest's tokens side by side whether or not ``ahead`` ran, so the score
is the same either way.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import jinja2

from vlrl.answer import extract_answer, has_final_answer
from vlrl.config import RewardJudgeConfig
from vlrl.rewards.verifier import logsumexp, single_tokens
from vlrl.types import SamplingParams

if TYPE_CHECKING:  # vlrl.engines imports the config, which imports the verifier's defaults
    from vlrl.engines.base import Engine

PROMPT = Path(__file__).with_name("judge.jinja")
_CUT = "\x00answer\x00"  # where the answer goes, found again in the rendered chat text


@dataclass(frozen=True)
class Judgement:
    """The judge's score of one answer, how it read, and the tokens it took."""

    score: float  # 1 / 0 (generate), P(yes) (p_yes); 0 when unanswered or unparsed
    verdict: str  # "yes", "no", "unparsed" (generate: no mark in the reply), "unanswered" (no answer stated)
    prompt_tokens: int = 0
    reply_tokens: int = 0
    reply: str = ""

    def parts(self) -> dict[str, float]:
        """Its reward parts: the score, and the two failures as 0/1 (their step means are the rates)."""
        return {"judge": self.score, "judge_unparsed": float(self.verdict == "unparsed"),
                "judge_unanswered": float(self.verdict == "unanswered")}


class AnswerJudge:
    """Judges answers on ``engine`` with ``tokenizer`` (the judge model's); see the module docstring."""

    def __init__(self, engine: Engine, tokenizer: Any, cfg: RewardJudgeConfig):
        self.engine, self.tokenizer, self.cfg = engine, tokenizer, cfg
        path = Path(cfg.prompt) if cfg.prompt else PROMPT
        if not path.is_file():
            raise ValueError(f"reward_judge.prompt {cfg.prompt!r} is not a file")
        try:
            self.template = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(
                path.read_text())
        except jinja2.TemplateError as e:
            raise ValueError(f"reward_judge.prompt {str(path)!r}: {e}") from None
        if cfg.verdict == "p_yes":
            self.yes_ids = single_tokens(tokenizer, cfg.yes_words, "yes", "reward_judge")
            self.no_ids = single_tokens(tokenizer, cfg.no_words, "no", "reward_judge")
            if set(self.yes_ids) & set(self.no_ids):
                raise ValueError(f"reward_judge: yes words {cfg.yes_words} and no words {cfg.no_words} share a token")
        self._marks = re.compile("|".join(re.escape(m) for m in (cfg.yes, cfg.no)))

    def prompt_ids(self, question: str, truths: Sequence[str], answer: str) -> tuple[list[int], list[int]]:
        """The prompt as (the part before the answer, the answer and the rest): the first depends on the sample
        alone."""
        text = self.template.render(question=question, ground_truth=ground_truth(truths), answer=_CUT,
                                    yes=self.cfg.yes, no=self.cfg.no)
        if text.count(_CUT) != 1:
            raise ValueError("reward_judge.prompt must use {{ answer }} exactly once")
        chat = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)
        before, after = chat.split(_CUT)
        encode = lambda s: self.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        return encode(before), encode(answer + after)

    async def ahead(self, key: str, question: str, truths: Sequence[str]) -> None:
        """Prefill the prompt up to the answer (the sample's part) under ``key``, while the policy decodes."""
        head, _ = self.prompt_ids(question, truths, "")
        await self.engine.prefill(_key(key), head, [])

    async def judge(self, key: str, question: str, truths: Sequence[str], response: str) -> Judgement:
        """Judge the answer stated in ``response`` (the policy's final turn) against ``truths``."""
        if not has_final_answer(response):
            return Judgement(0.0, "unanswered")
        answer = self._marks.sub("", extract_answer(response)).strip()  # an answer cannot hand the judge a verdict
        head, rest = self.prompt_ids(question, truths, answer)
        ids = head + rest
        if self.cfg.verdict == "p_yes":
            scores = await self.engine.score_next(_key(key), ids, [], self.yes_ids + self.no_ids)
            k = len(self.yes_ids)
            yes, no = logsumexp(scores.logprobs[:k]), logsumexp(scores.logprobs[k:])
            if not (math.isfinite(yes) or math.isfinite(no)):
                return Judgement(0.0, "unparsed", len(ids))
            d = yes - no  # P(yes) = sigmoid(d), written so that neither side overflows
            p = 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))
            return Judgement(p, "yes" if p >= 0.5 else "no", len(ids))
        sampling = SamplingParams(max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature,
                                  seed=zlib.crc32(key.encode()))  # the same trajectory, the same draw
        reply = await self.engine.complete(ids, [], sampling, f"{_key(key)}/reply")
        text = self.tokenizer.decode(reply.token_ids, skip_special_tokens=False)
        marks = self._marks.findall(text)
        if not marks:
            return Judgement(0.0, "unparsed", len(ids), len(reply.token_ids), text)
        right = marks[-1] == self.cfg.yes
        return Judgement(float(right), "yes" if right else "no", len(ids), len(reply.token_ids), text)


def ground_truth(truths: Sequence[str]) -> str:
    """The accepted answers as the judge reads them: one as it is, several as alternatives."""
    return truths[0] if len(truths) == 1 else " OR ".join(truths)


def _key(key: str) -> str:
    return f"{key}/judge"
