"""A model-based verifier: a VLM asked whether a trajectory's answer is correct, fed while it is written.

The score is P("Yes") normalized over the Yes / No answers: with ``y`` and ``n`` the
summed probabilities of the yes-words and the no-words as the first token of the reply,

    score = y / (y + n)

read from the raw next-token logprobs (``Engine.score_next``), so temperature and the
policy's sampling settings play no part.

A trajectory is fed incrementally: ``extend(traj_id, ids, images)`` hands over what was
generated or observed since the last call and prefills it at once (the engine keeps the
KV: the HF engine per trajectory, vLLM through its prefix cache), so by the time the
policy stops only the last piece and the question remain; ``finish(traj_id)`` appends the
question and scores. The score is a function of the ids and images alone: fed in chunks
of any size or all at once, it is the same number (up to float summation order).

A reward-model folder (``vlrl.rewards.head``) is read by its scalar head instead: no
question, the score is ``sigmoid(w . h + b)`` at the trajectory's last token (its turn
closed if it was cut off), streamed the same way.

The verifier reads the policy's token ids as they are, so it must share the policy's
tokenizer (the policy itself, or a bigger model of the same family); only the image runs
are resized when its processor sizes images differently (``resized_image_runs``).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from PIL import Image

from vlrl.clock import now
from vlrl.config import QUESTION

if TYPE_CHECKING:  # vlrl.engines imports the config, which imports the verifier's defaults
    from vlrl.engines.base import Engine
    from vlrl.rewards.head import RewardHead
    from vlrl.vision import VisionInputs

# the turn that asks: Qwen's chat format, closing the policy's turn first if it was cut off
TURN = "\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
END_OF_TURN = "<|im_end|>"
ImageRuns = Callable[[Sequence[int], Sequence[Image.Image]], list[int]]  # a piece's ids, its images -> the ids


@dataclass(frozen=True)
class Verdict:
    """A verifier's score of one trajectory, and where its prefill work happened."""

    score: float  # P(Yes) normalized over Yes / No, or sigmoid of a reward model's scalar head
    early_tokens: int  # tokens prefilled by ``extend`` before ``finish`` (hidden under decoding)
    late_tokens: int  # tokens ``finish`` had to compute itself (the question included)
    finish_s: float  # seconds ``finish`` took: what the trajectory waited for after its last token


@dataclass
class _Feed:
    ids: list[int] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    fed: int = 0  # how many of ``ids`` the engine has prefilled
    early: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Verifier:
    """Scores trajectories on ``engine``; see the module docstring."""

    def __init__(self, engine: Engine, tokenizer: Any, question: str = QUESTION,
                 yes: Sequence[str] = ("Yes",), no: Sequence[str] = ("No",),
                 image_runs: ImageRuns | None = None, head: RewardHead | None = None):
        """``image_runs`` rewrites each piece's image runs for the verifier's processor
        (``resized_image_runs``); None when it sizes images as the policy's does. ``head``:
        the engine runs a reward-model folder, read by its scalar head (question, yes and no unused)."""
        self.engine = engine
        self.image_runs = image_runs
        self.reading: YesNo | ScalarHead = ScalarHead(tokenizer, head) if head else YesNo(tokenizer, question, yes, no)
        self._feeds: dict[str, _Feed] = {}

    async def extend(self, traj_id: str, new_ids: Sequence[int], new_images: Sequence[Image.Image] = ()) -> None:
        """Append the trajectory's next piece (its images' placeholders complete) and prefill it.

        Calls for one trajectory may overlap: a call that finds its piece already
        prefilled by a later one's returns at once, so a slow verifier catches up in one
        prefill instead of one per chunk.
        """
        feed = self._feeds.setdefault(traj_id, _Feed())
        feed.ids.extend(self.image_runs(new_ids, new_images) if self.image_runs else new_ids)
        feed.images.extend(new_images)
        async with feed.lock:
            if feed.fed >= len(feed.ids):
                return
            ids, images = list(feed.ids), list(feed.images)
            reused = await self.engine.prefill(_key(traj_id), ids, images)
            feed.early += len(ids) - reused
            feed.fed = len(ids)

    async def finish(self, traj_id: str) -> Verdict:
        """Ask the question after everything extended so far; score; forget the trajectory."""
        feed = self._feeds.get(traj_id)
        if feed is None or not feed.ids:
            raise KeyError(f"verifier: nothing was extended for trajectory {traj_id!r}")
        start = now()
        async with feed.lock:
            self._feeds.pop(traj_id, None)
            ids = self.reading.ids(traj_id, feed.ids)
            scores = await self.engine.score_next(_key(traj_id), ids, feed.images, self.reading.token_ids)
        score = self.reading.score(traj_id, scores.logprobs)
        return Verdict(score, feed.early, len(ids) - scores.cached_tokens, now() - start)

    async def score(self, traj_id: str, ids: Sequence[int], images: Sequence[Image.Image]) -> Verdict:
        """The whole trajectory at once: the non-streamed score."""
        self.discard(traj_id)
        self._feeds[traj_id] = _Feed(self.image_runs(ids, images) if self.image_runs else list(ids), list(images))
        return await self.finish(traj_id)

    def discard(self, traj_id: str) -> None:
        """Forget a trajectory that will not be finished (it failed, or was dropped)."""
        self._feeds.pop(traj_id, None)


class YesNo:
    """The verifier's question after the trajectory; the score is P(Yes) over Yes / No as its reply's first token."""

    def __init__(self, tokenizer: Any, question: str, yes: Sequence[str], no: Sequence[str]):
        yes_ids, no_ids = single_tokens(tokenizer, yes, "yes"), single_tokens(tokenizer, no, "no")
        if set(yes_ids) & set(no_ids):
            raise ValueError(f"verifier: yes words {list(yes)} and no words {list(no)} share a token")
        self.token_ids, self.k = yes_ids + no_ids, len(yes_ids)
        self.ask = FollowUp(tokenizer, question)

    def ids(self, traj_id: str, ids: Sequence[int]) -> list[int]:
        return self.ask.after(ids)

    def score(self, traj_id: str, logprobs: Sequence[float]) -> float:
        yes, no = logsumexp(logprobs[: self.k]), logsumexp(logprobs[self.k :])
        if not (math.isfinite(yes) and math.isfinite(no)):
            raise ValueError(f"verifier: no Yes/No probability for trajectory {traj_id!r} "
                             f"(log P(yes) = {yes}, log P(no) = {no})")
        return 1.0 / (1.0 + math.exp(no - yes))


class ScalarHead:
    """A reward model's head at the trajectory's last token: sigmoid(w . h + b), read as
    log P(head token) - log P(zero token) (see ``vlrl.rewards.head``)."""

    def __init__(self, tokenizer: Any, head: RewardHead):
        self.token_ids = [tokenizer.convert_tokens_to_ids(head.token), tokenizer.convert_tokens_to_ids(head.zero_token)]
        self.head = head
        self.end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)

    def ids(self, traj_id: str, ids: Sequence[int]) -> list[int]:
        used = sorted(set(self.token_ids) & set(ids))
        if used:
            raise ValueError(f"verifier: trajectory {traj_id!r} contains the reward head's token id(s) {used}, "
                             "whose input embeddings the head overwrote")
        return [*ids] if ids and ids[-1] == self.end_of_turn else [*ids, self.end_of_turn]

    def score(self, traj_id: str, logprobs: Sequence[float]) -> float:
        value = logprobs[0] - logprobs[1] + self.head.bias
        if not math.isfinite(value):
            raise ValueError(f"verifier: the reward head gave {value} for trajectory {traj_id!r}")
        return 1.0 / (1.0 + math.exp(-value)) if value >= 0 else math.exp(value) / (1.0 + math.exp(value))


class FollowUp:
    """A user turn put after a trajectory, then the opener of the model's reply (Qwen's chat format)."""

    def __init__(self, tokenizer: Any, text: str):
        turn = TURN.format(question=text)
        self.ids = tokenizer.encode(turn, add_special_tokens=False)
        self.closed_ids = tokenizer.encode(END_OF_TURN + turn, add_special_tokens=False)  # the model was cut off
        self.end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)

    def after(self, ids: Sequence[int]) -> list[int]:
        """``ids`` (closing the model's turn if it was cut off), the user turn, the reply's opener."""
        return [*ids, *(self.ids if ids and ids[-1] == self.end_of_turn else self.closed_ids)]


def resized_image_runs(policy: VisionInputs, verifier: VisionInputs) -> ImageRuns | None:
    """What rewrites the policy's image runs to the verifier's sizes; None when both processors size images alike.

    A piece handed to the verifier holds whole image runs (a prompt or an observation), so
    each run can be collapsed to one placeholder and expanded again for the verifier.
    """
    if (policy.min_pixels, policy.max_pixels, policy.patch, policy.merge) == (
            verifier.min_pixels, verifier.max_pixels, verifier.patch, verifier.merge):
        return None
    return lambda ids, images: verifier.expand(policy.collapse(ids), images)


def check_same_tokenizer(model_dir: str, tokenizer: Any, key: str) -> None:
    """ValueError unless the model at ``model_dir`` has the policy's vocabulary: a verifier reads the
    policy's token ids as they are, so another tokenizer would read other words."""
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(model_dir).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{key} {model_dir!r} has a different tokenizer from the policy's; the verifier reads "
                         "the policy's token ids as they are, so it must be the policy or a model of its family")


def _key(traj_id: str) -> str:
    return f"{traj_id}/verify"


def single_tokens(tokenizer: Any, words: Sequence[str], what: str, who: str = "verifier") -> list[int]:
    """Each word's one token id; ValueError naming a word the tokenizer splits or lacks."""
    if not words:
        raise ValueError(f"{who}: no {what} words given")
    ids = []
    for word in words:
        pieces = tokenizer.encode(word, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"{who}: the {what} word {word!r} is {len(pieces)} tokens {pieces} in this "
                             "tokenizer; give words that are one token each")
        ids.append(pieces[0])
    return ids


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if not math.isfinite(top):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))
