"""Generative verification: the model writes a check of a sampled answer and ends with a verdict, which is parsed.

Beside P(Yes) (``vlrl.rewards.verifier``: one next-token probability), this is verification
as the self-verification study (arXiv 2506.17417) runs it. The user turn after the trajectory
comes from a Jinja file (``judge.generate_prompt``; ``verify.jinja`` here by default) with
``marker``, ``yes`` and ``no``; the reply is sampled (``generate_temperature``, at most
``generate_max_tokens``). Its verdict is the word after the last ``marker`` in the reply
(any case): one of ``yes`` words -> "yes" (score 1), one of ``no`` words -> "no" (score 0),
anything else or no marker -> "none" (score 0.5, between the two, so best-of-k prefers a
"yes" to it and it to a "no"). A verdict written twice counts as the last one written.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import jinja2
from PIL import Image

from vlrl.rewards.verifier import FollowUp, ImageRuns
from vlrl.types import SamplingParams

PROMPT = Path(__file__).with_name("verify.jinja")
SCORES = {"yes": 1.0, "no": 0.0, "none": 0.5}


@dataclass(frozen=True)
class Written:
    """One written verification: its verdict, the score it gives, the tokens it wrote and read anew, its text."""

    verdict: str  # "yes", "no", "none"
    score: float
    tokens: int  # written
    text: str
    read_tokens: int = 0  # prompt tokens the engine computed (the follow-up, and what its cache did not hold)


def parse_verdict(text: str, marker: str, yes: Sequence[str], no: Sequence[str]) -> str:
    """"yes", "no" or "none": the word after the last ``marker`` in ``text`` (any case, punctuation around it
    ignored), as one of ``yes`` or ``no``."""
    found = re.findall(rf"{re.escape(marker)}\W*(\w+)", text, re.IGNORECASE)
    if not found:
        return "none"
    word = found[-1].lower()
    return "yes" if word in {w.lower() for w in yes} else "no" if word in {w.lower() for w in no} else "none"


def prompt_text(path: str, marker: str, yes: Sequence[str], no: Sequence[str]) -> str:
    """The user turn of ``path`` ("": the built-in), rendered; a missing file or a bad template is named."""
    file = Path(path) if path else PROMPT
    if not file.is_file():
        raise ValueError(f"judge.generate_prompt {path!r} is not a file")
    try:
        template = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(file.read_text())
        return template.render(marker=marker, yes=list(yes), no=list(no)).strip()
    except jinja2.TemplateError as e:
        raise ValueError(f"judge.generate_prompt {str(file)!r}: {e}") from None


class WrittenVerifier:
    """Asks ``engine`` (the policy's, or an external verifier's) to write a verification after a trajectory."""

    def __init__(self, engine: Any, tokenizer: Any, text: str, sampling: SamplingParams, marker: str,
                 yes: Sequence[str], no: Sequence[str], image_runs: ImageRuns | None = None):
        self.engine, self.tokenizer, self.sampling = engine, tokenizer, sampling
        self.follow_up = FollowUp(tokenizer, text)
        self.marker, self.yes, self.no, self.image_runs = marker, list(yes), list(no), image_runs

    async def verify(self, request_id: str, ids: Sequence[int], images: Sequence[Image.Image]) -> Written:
        """The verification of the trajectory ``ids`` (its images ``images``); a context it does not fit in
        raises ValueError, as the engine does."""
        ids = self.image_runs(ids, images) if self.image_runs else list(ids)
        sampling = replace(self.sampling, seed=zlib.crc32(request_id.encode()))  # the same request, the same draw
        prompt = self.follow_up.after(ids)
        reply = await self.engine.complete(prompt, images, sampling, request_id)
        text = self.tokenizer.decode(reply.token_ids, skip_special_tokens=True)
        verdict = parse_verdict(text, self.marker, self.yes, self.no)
        return Written(verdict, SCORES[verdict], len(reply.token_ids), text, len(prompt) - reply.cached_tokens)
