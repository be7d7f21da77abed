"""The typed messages that cross vlrl's boundaries: samples, engine I/O, trajectories.

Token ids, loss mask, behavior logprobs and policy versions stay aligned per token from
the moment a token is born (engine delta or env observation) to the trainer's batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

FinishReason = Literal["stop", "length", "abort"]
SegmentKind = Literal["prompt", "policy", "observation"]
# Why a trajectory ended: an engine's finish reason when no environment drives it, else the
# environment's (the model answered, a turn / tool-call / image / visual-token / context limit was hit, or it
# wrote an action that does not parse where the env is told to end on one).
EndReason = Literal["stop", "length", "abort", "answer", "max_turns", "max_tool_calls", "image_budget",
                    "visual_budget", "context", "invalid_action"]
ActionKind = Literal["call", "code", "invalid"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]  # of the policy loss over tokens
KLEstimator = Literal["k1", "k3"]


@dataclass(frozen=True)
class Sample:
    """One question from a task: images, question, accepted answers, tool metadata."""

    id: str
    images: tuple[Image.Image, ...]
    question: str
    answers: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """How an engine samples one request; the same fields mean the same on every engine."""

    max_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy; at most 2 (vLLM's bound, kept on every engine)
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings; the tokens that complete one are kept
    stop_token_ids: tuple[int, ...] = ()  # in addition to the model's end-of-sequence ids
    suppress_token_ids: tuple[int, ...] = ()  # in addition to the vision tokens, never sampled
    # what the request generated before it was cut off (a pause, a lost engine replica) and
    # continued as this one: a stop string begun there and completed here still stops it
    stop_context: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass(frozen=True)
class Delta:
    """New tokens of one request, streamed by an engine.

    ``logprobs`` are the model's raw log-probabilities of the sampled tokens (temperature
    1, no suppression): what the trainer's forward computes for the same ids.
    """

    request_id: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    version: int  # weight version that produced these tokens
    finish_reason: FinishReason | None = None
    cached_tokens: int = 0  # on a request's first delta: prompt tokens served from cache


@dataclass(frozen=True)
class Completion:
    """Everything one request generated: the concatenation of its deltas."""

    request_id: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    versions: tuple[int, ...]
    finish_reason: FinishReason | None
    cached_tokens: int = 0  # prompt tokens served from cache


@dataclass(frozen=True)
class NextTokenScores:
    """Raw log-probabilities (temperature 1, whole vocabulary) of chosen next tokens after a prompt."""

    logprobs: tuple[float, ...]  # one per asked token id, in the order asked
    cached_tokens: int = 0  # prompt tokens served from cache


@dataclass(frozen=True)
class Segment:
    """A contiguous piece of a trajectory, born in one place.

    ``prompt`` and ``observation`` segments are inputs (loss mask 0) and carry the images
    whose placeholders they contain; ``policy`` segments are sampled (loss mask 1, unless a
    loss-mask policy left them untrained: ``vlrl.algos.masks``) and carry one behavior
    logprob and one policy version per token.
    """

    kind: SegmentKind
    token_ids: tuple[int, ...]
    images: tuple[Image.Image, ...] = ()
    logprobs: tuple[float, ...] = ()
    versions: tuple[int, ...] = ()
    trained: bool = True  # (policy) whether its tokens carry the loss

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if self.kind == "policy":
            if len(self.logprobs) != n or len(self.versions) != n:
                raise ValueError(
                    f"policy segment: {n} tokens but {len(self.logprobs)} logprobs and {len(self.versions)} versions"
                )
            if self.images:
                raise ValueError("policy segment: a model-generated segment cannot carry images")
        elif self.logprobs or self.versions:
            raise ValueError(f"{self.kind} segment: only policy segments carry logprobs and versions")


@dataclass(frozen=True)
class Score:
    """A reward: the total that trains, and its named parts (e.g. accuracy, format) for logging."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardContext:
    """What a reward may read beside the response and the accepted answers: a reward function that takes a
    keyword ``context`` is handed one (``reward(text, answers, context=...)``); plain ones are called as before."""

    question: str
    metadata: dict[str, Any]  # the sample's (its task, boxes, family, ...)
    tool_stats: dict[str, int]  # ``Trajectory.tool_stats()``: calls, errors, parse errors, sandbox restarts
    turns: int  # policy turns
    finish_reason: str | None  # how the episode ended (answer, length, max_turns, ...)


@dataclass(frozen=True)
class ActionRecord:
    """One action a policy turn asked for, and how it went.

    ``invalid`` actions never ran: the parser rejected them (malformed JSON, code that does
    not compile); ``ok`` is False with the error the model was shown.
    """

    turn: int  # 1-based policy turn that asked for it
    kind: ActionKind
    name: str  # tool name; "" for code blocks and invalid actions
    ok: bool
    error: str | None = None
    seconds: float = 0.0
    images_out: int = 0
    worker_replaced: bool = False  # the action hung or crashed its sandbox worker


@dataclass
class Timings:
    """Where one trajectory's time went, and where its verifier's prefill ran (the rollout manager fills it)."""

    decode_s: float = 0.0  # waiting on the engine's tokens
    env_s: float = 0.0  # the environment's steps: parsing, tool calls, observations
    paused_s: float = 0.0  # paused between steps by the overlap scheduler
    wall_s: float = 0.0  # from the first request to the end of its episode
    reward_s: float = 0.0  # rewarding it
    verifier_early_tokens: int | None = None  # verifier prefill under decoding; None: no verifier judged it
    verifier_late_tokens: int = 0  # verifier prefill after its last token
    verifier_finish_s: float = 0.0  # from its last token to the verdict


@dataclass
class Trajectory:
    """One interaction as token ids: prompt, then policy and observation segments."""

    id: str
    sample_id: str
    segments: list[Segment]
    reward: float | None = None
    reward_parts: dict[str, float] = field(default_factory=dict)
    finish_reason: EndReason | None = None
    answer: str | None = None  # the final answer the environment read, if the model gave one
    actions: list[ActionRecord] = field(default_factory=list)
    deferred_steps: int = 0
    timings: Timings = field(default_factory=Timings)
    # per-token scores of other models computed while it decoded (``vlrl.trainer.streamed``): name -> (version, scores)
    streamed: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def token_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.token_ids]

    @property
    def images(self) -> list[Image.Image]:
        return [im for s in self.segments for im in s.images]

    @property
    def loss_mask(self) -> list[int]:
        return [int(s.kind == "policy" and s.trained) for s in self.segments for _ in s.token_ids]

    @property
    def behavior_logprobs(self) -> list[float]:
        """Per token; 0.0 where the loss mask is 0."""
        return [lp for s in self.segments for lp in (s.logprobs or (0.0,) * len(s.token_ids))]

    @property
    def versions(self) -> list[int]:
        """Per token; -1 where the loss mask is 0."""
        return [v for s in self.segments for v in (s.versions or (-1,) * len(s.token_ids))]

    @property
    def turns(self) -> int:
        """Number of policy turns."""
        return sum(s.kind == "policy" for s in self.segments)

    def tool_stats(self) -> dict[str, int]:
        """Counts of the trajectory's actions: run, failed, rejected by the parser, workers replaced."""
        ran = [a for a in self.actions if a.kind != "invalid"]
        return {
            "tool_calls": len(ran),
            "tool_errors": sum(not a.ok for a in ran),
            "parse_errors": sum(a.kind == "invalid" for a in self.actions),
            "sandbox_restarts": sum(a.worker_replaced for a in self.actions),
        }

    def add_policy(self, completion: Completion) -> None:
        """Append what an engine generated (and record how it finished)."""
        self.segments.append(
            Segment("policy", completion.token_ids, logprobs=completion.logprobs, versions=completion.versions)
        )
        self.finish_reason = completion.finish_reason

    def add_observation(self, token_ids: tuple[int, ...], images: tuple[Image.Image, ...] = ()) -> None:
        """Append what the environment returned (tool output text and images)."""
        self.segments.append(Segment("observation", token_ids, images=images))


@dataclass
class Group:
    """The G trajectories sampled for one prompt; GRPO trains a group only whole."""

    sample: Sample
    trajectories: list[Trajectory]
