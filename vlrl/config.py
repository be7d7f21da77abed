"""Typed configuration: dataclasses loaded from YAML, with dotted command-line overrides.

``load_config(RunConfig, "cfg.yaml", ["trainer.lr=1e-6"])`` reads the file, applies the
overrides (values parsed as YAML), and builds the dataclass tree. Unknown keys and
values of the wrong type raise ``ConfigError`` naming the full key path.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import yaml

from vlrl.typecheck import TypeCheckError, conform
from vlrl.types import Aggregation, KLEstimator, SamplingParams

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value that cannot be used, with the key path that holds it."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        apply_override(data, item)
    return from_dict(cls, data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the nested dict ``data``; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    try:
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: its value is not valid YAML: {e}") from None


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    try:
        return conform(cls, data, path, numbers_from_strings=True)
    except TypeCheckError as e:
        raise ConfigError(str(e)) from None


def to_dict(obj: Any) -> Any:
    """The plain YAML-able form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- sections

QUESTION = "Is the final answer above correct? Answer Yes or No."  # what a verifier is asked


@dataclass
class TaskConfig:
    """Which samples a run sees, and how their answers are scored."""

    name: str = "synthetic_charts"  # registry name (kind task), entry point, or module:attr
    args: dict[str, Any] = field(default_factory=dict)  # passed to the task, e.g. {path: ..., split: test}
    reward: str = ""  # empty: the reward the task names


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of every action; one worker process per slot."""

    workers: int = 2
    timeout_s: float = 10.0  # wall clock per action
    cpu_seconds: float = 10.0  # CPU time per action
    memory_mb: int = 2048  # address space of a worker
    max_file_mb: int = 16  # largest file an action may write in its /tmp
    max_output_chars: int = 20_000  # printed text kept per action
    start_timeout_s: float = 60.0
    allow_unsandboxed: bool = False  # without bubblewrap: run anyway, with a loud warning

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers must be in [1, 64], got {self.workers}")
        if self.timeout_s <= 0 or self.cpu_seconds <= 0:
            raise ValueError(f"timeouts must be positive, got {self.timeout_s}, {self.cpu_seconds}")


@dataclass
class OptimConfig:
    """AdamW, the learning-rate schedule, clipping and micro-batching."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"  # decay after warm-up, to 0 at the last step
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    micro_batch_tokens: int = 8192  # tokens per forward; the gradient accumulates over micro-batches
    freeze_vision: bool = False  # keep the vision tower as loaded
    lora_rank: int = 0  # > 0: train LoRA adapters on the language model's projections instead of every weight
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward: less memory, more time
    autocast: Literal["none", "bfloat16"] = "none"  # bfloat16: the trainer's forwards in bf16, weights and AdamW fp32

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens must be >= 1, got {self.micro_batch_tokens}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")


@dataclass
class LossConfig:
    """The clipped surrogate and its regularizers."""

    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low: DAPO clip-higher
    dual_clip: float = 0.0  # > 1: a negative advantage's token loss is at most dual_clip x |A| (dual-clip PPO;
    #                         verl's clip_ratio_c, VTool-R1's 3.0); 0: off
    aggregation: Aggregation = "token-mean"
    kl_coef: float = 0.0  # > 0: KL to the frozen reference model
    kl_estimator: KLEstimator = "k3"
    # > 0: truncated importance weights min(pi_old / mu, cap); 0: off; None: the run decides (vlrl train: 2.0
    # under rollout.schedule overlap, whose deferred tokens come from older weights, else off)
    importance_cap: float | None = None
    importance_level: Literal["token", "sequence"] = "token"  # token: a ratio per token; sequence: one per
    #   trajectory, the product of its tokens' ratios (verl 0.6 / slime's sequence-level correction)
    importance_mode: Literal["truncate", "mask"] = "truncate"  # truncate: min(ratio, cap); mask: weight 1 inside
    #   [1 / cap, cap] and 0 outside (masked importance sampling: a token or trajectory too far off-policy is not
    #   trained on; loss/importance_weight is then the share kept)

    def __post_init__(self) -> None:
        if self.dual_clip and self.dual_clip <= 1.0:
            raise ValueError(f"algo.loss.dual_clip must be > 1 (or 0: off), got {self.dual_clip}")


@dataclass
class CriticConfig:
    """The value model: its own copy of a VLM (by default the policy's folder) plus a linear head."""

    model_path: str = ""  # empty: the policy's model folder
    lr: float = 1.0e-4
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    micro_batch_tokens: int = 8192



@dataclass
class ModelConfig:
    """Which model folder to load, and in what precision."""

    path: str = "runs/quickstart/tiny-vlm"  # a Qwen2-VL / Qwen2.5-VL folder, or `vlrl model tiny` output
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"  # (vlrl train) where the trainer holds the policy, its KL reference and the critic: cpu,
    #                      cuda, cuda:N; Ray trainer ranks each use the GPU Ray gives them (the engine: engine.device)
    min_pixels: int = 0  # an image's pixel bounds (Qwen's min_pixels / max_pixels: each image is resized into them,
    max_pixels: int = 0  # for the engines and the trainer alike); 0: the folder's preprocessor config

    def __post_init__(self) -> None:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):  # whether torch sees a GPU: vlrl train checks
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        check_pixel_bounds(self.min_pixels, self.max_pixels)


def check_pixel_bounds(min_pixels: int, max_pixels: int) -> None:
    """ValueError unless the bounds are 0 (the processor's) or positive, the lower not above the upper."""
    if min_pixels < 0 or max_pixels < 0:
        raise ValueError(f"min_pixels and max_pixels must be >= 0 (0: the processor's), got {min_pixels} and "
                         f"{max_pixels}")
    if min_pixels and max_pixels and min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} is above max_pixels {max_pixels}")


@dataclass
class EngineConfig:
    """The rollout engine. Fields marked (hf) or (vllm) apply to that engine only."""

    kind: Literal["hf", "vllm"] = "hf"
    max_model_len: int = 0  # 0: the model's max_position_embeddings
    max_num_seqs: int = 64  # requests decoded together
    device: str = "cpu"  # (hf) torch device
    prefix_cache_tokens: int = 65536  # (hf) tokens of KV kept from ended requests for reuse by later ones
    max_prefill_tokens: int = 8192  # (hf) padded tokens one multi-row prefill forward holds (a longer prompt: alone)
    gpu_memory_utilization: float = 0.2  # (vllm) on CPU builds: fraction of RAM
    kv_cache_gib: float = 1.0  # KV cache size. (hf) the running batch's keys and values: a request waits while
    #                            it could pass it (a lone request runs); 0: no bound. (vllm) CPU builds:
    #                            VLLM_CPU_KVCACHE_SPACE, rounded up to whole GiB
    enable_prefix_caching: bool = True  # (vllm)
    block_size: int = 0  # (vllm) KV block tokens, the prefix cache's granularity; 0: vLLM's default (128 on CPU)
    tensor_parallel_size: int = 1  # (vllm)
    max_images_per_prompt: int = 8  # (vllm) images one trajectory may hold
    replicas: int = 1  # engines behind a router, each a Ray actor (needs distributed.backend: ray)
    replica_resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})  # Ray resources per replica,
    #                                         e.g. {GPU: 1}, or {GPU: 2} with tensor_parallel_size 2
    restart_replicas: bool = True  # start a new replica (with the latest weights) in place of one that died
    batch_invariant: bool = False  # (hf) every request prefilled and decoded alone, no KV reused from another:
    #                                its numbers do not depend on what shares a step (set by determinism: strict)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gib < 0:
            raise ValueError(f"kv_cache_gib must be >= 0, got {self.kv_cache_gib}")
        if self.batch_invariant and self.kind != "hf":
            raise ValueError(f"batch_invariant decoding is the HF engine's (engine.kind hf), got {self.kind!r}")


@dataclass
class EnvConfig:
    """The environment every trajectory runs in, its tools and its limits."""

    name: str = "visual_tool"  # registry name (kind env), entry point, or module:attr
    tools: list[str] = field(default_factory=lambda: ["chart_table_focus", "drawing"])  # names/modules/files
    action_formats: list[Literal["json", "code"]] = field(default_factory=lambda: ["json"])  # what the model writes
    max_turns: int = 3  # policy turns per trajectory, the answer's included
    max_tool_calls: int = 4  # actions run per trajectory
    max_images: int = 4  # images per trajectory, the question's included
    # visual tokens per trajectory, the question's images included (0: no budget): a tool's images that would pass it
    # are downscaled to share what is left, or the episode ends ("visual_budget") if the smallest image would not fit
    max_visual_tokens: int = 0
    tool_image_max_pixels: int = 0  # a tool's image larger than this is downscaled first (0: the processor's bound)
    max_context_tokens: int = 8192  # a trajectory that would outgrow this ends ("context")
    max_observation_chars: int = 2000  # text of one tool result (printed output included) shown to the model
    templates: str = ""  # a folder whose system / question / observation .jinja files replace the built-ins
    observation_role: Literal["tool", "user"] = "tool"  # chat role of tool results ("user" for templates without tool turns)
    # an action that does not parse: "retry" shows the parse error as the tool result and goes on;
    # "end" ends the episode there (finish "invalid_action", no answer), so a reward on the answer
    # makes a broken call cost what a wrong answer costs and RL keeps the call format
    invalid_action: Literal["retry", "end"] = "retry"
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_images", "max_context_tokens", "max_observation_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_tool_calls", "max_visual_tokens", "tool_image_max_pixels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.action_formats:
            raise ValueError("action_formats must name at least one of json, code")


@dataclass
class GenerateConfig:
    """`vlrl generate`: sample a few answers to one question about one image."""

    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    question: str = "Which bar is the highest?"
    image: str = ""  # an image file; empty: a small built-in bar chart
    n: int = 4  # samples to draw


@dataclass
class PlayConfig:
    """`vlrl env play`: run an environment with a model-free agent and write what happened."""

    model: ModelConfig = field(default_factory=ModelConfig)  # only its tokenizer and image processor are used
    env: EnvConfig = field(default_factory=EnvConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    agent: str = "scripted"  # "scripted", "random", or a module:attr / file.py:attr agent
    n: int = 5  # episodes
    seed: int = 0
    out: str = "runs/play"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


@dataclass
class SamplingConfig:
    """How each policy turn is sampled: the fields `vlrl train`'s ``rollout`` section and `vlrl eval` share.

    The sections that sample inherit these fields, so a YAML keeps them flat (``rollout.temperature``).
    """

    max_new_tokens: int = 64  # per policy turn
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.sampling()  # checks the values

    def sampling(self, **fields: Any) -> SamplingParams:
        """The engine's sampling parameters for these settings, with ``fields`` (e.g. a seed) set as well."""
        return SamplingParams(**{"max_tokens": self.max_new_tokens, "temperature": self.temperature,
                                 "top_p": self.top_p, "top_k": self.top_k, **fields})


@dataclass
class RolloutConfig(SamplingConfig):
    """How each step's trajectories are sampled."""

    prompts_per_step: int = 8  # samples drawn from the task per step
    group_size: int = 4  # trajectories per sample (G)
    schedule: Literal["sync", "async", "overlap"] = "sync"  # sync: reward after all trajectories end; async: as
    #   each ends; overlap: async, and a step closes when prompts_per_step groups are whole, the rest carried over
    extra_groups: int | Literal["auto"] = 0  # (overlap) groups in flight beyond prompts_per_step (Δ); auto: start
    #   at a quarter of prompts_per_step, +-1/8 of it per step while the reward's 5-step slope is (not) positive
    max_staleness: int | None = None  # (overlap) steps a group may be carried over before it is dropped (counted);
    #   None: never: every started trajectory runs until it ends or reaches max_new_tokens (OPPO: no partial work lost)
    decode_during_update: bool = False  # (overlap) the engine keeps decoding the groups in flight while the trainer
    #   updates (disaggregated: give the engine resources of its own, e.g. a Ray replica and
    #   distributed.trainer_threads); the new weights reach it at the step's end, each token keeps its version

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.extra_groups != "auto" and self.extra_groups < 0:
            raise ValueError(f"extra_groups must be >= 0 or auto, got {self.extra_groups}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 or None, got {self.max_staleness}")


@dataclass
class QuestionConfig:
    """What a verifier is asked, and the answer tokens read from it: the fields `vlrl train`'s ``verifier`` and
    `vlrl eval`'s ``judge`` share (inherited, so a YAML keeps them flat)."""

    question: str = QUESTION
    yes: list[str] = field(default_factory=lambda: ["Yes"])  # one token each; their probabilities are summed
    no: list[str] = field(default_factory=lambda: ["No"])
    min_pixels: int = 0  # a verifier model of its own: its image bounds (as model.min_pixels / max_pixels; 0: its
    max_pixels: int = 0  # folder's processor); the policy's images are resized to them before it reads them

    def __post_init__(self) -> None:
        check_pixel_bounds(self.min_pixels, self.max_pixels)


@dataclass
class VerifierConfig(QuestionConfig):
    """A model that judges each trajectory's answer: its P(Yes) is logged and may weigh in the reward."""

    model: str = ""  # "": none; "policy": the policy's own engine (self-verification); else a model folder sharing
    #                  the policy's tokenizer, run on its own engine of engine.kind; a reward-model folder
    #                  (`vlrl model reward-head`) is read by its scalar head: sigmoid(w . h + b) instead of P(Yes)
    weight: float = 0.0  # reward = (1 - weight) x rule-based + weight x score; 0: scored and logged only
    chunk_tokens: int | Literal["auto"] = 64  # rollout.schedule async: policy tokens per piece streamed while
    #                                           decoding (0: the whole trajectory at its end); auto: tuned online
    chunk_candidates: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # (auto) sizes tried
    chunk_window: int = 2  # (auto) steps each candidate runs while exploring
    chunk_retry_every: int = 50  # (auto) steps on the fastest before every candidate is tried again

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.min_pixels or self.max_pixels) and self.model in ("", "policy"):
            raise ValueError(f"min_pixels / max_pixels size a verifier model of its own, not model {self.model!r}: "
                             f"the policy's engine sizes images by model.min_pixels / max_pixels")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {self.weight}")
        if self.chunk_tokens != "auto" and self.chunk_tokens < 0:
            raise ValueError(f"chunk_tokens must be >= 0 or auto, got {self.chunk_tokens}")
        if not self.chunk_candidates or min(self.chunk_candidates) < 1:
            raise ValueError(f"chunk_candidates must be positive token counts, got {self.chunk_candidates}")
        if self.chunk_window < 1 or self.chunk_retry_every < 1:
            raise ValueError(f"chunk_window and chunk_retry_every must be >= 1, got {self.chunk_window} and "
                             f"{self.chunk_retry_every}")


@dataclass
class RewardJudgeConfig:
    """A model that grades each answer against the ground truth, as a reward part (``vlrl.rewards.judge``)."""

    model: str = ""  # "": none; "policy": the policy's own engine; else a model folder (its own tokenizer and chat
    #                  template) on its own engine of engine.kind
    prompt: str = ""  # a Jinja prompt file (question, ground_truth, answer, yes, no); "": vlrl/rewards/judge.jinja
    verdict: Literal["generate", "p_yes"] = "generate"  # generate: the last mark in its reply; p_yes: P(yes) over
    #                                                     yes_words / no_words as the reply's first token
    yes: str = "<|YES|>"  # (generate) the marks of a right and a wrong answer
    no: str = "<|NO|>"
    yes_words: list[str] = field(default_factory=lambda: ["Yes"])  # (p_yes) one token each
    no_words: list[str] = field(default_factory=lambda: ["No"])
    temperature: float = 0.0  # (generate) 0: greedy; each trajectory's reply is seeded by its id
    max_tokens: int = 64  # (generate) the reply's length at most
    weight: float = 1.0  # reward = (1 - weight) x rule-based + weight x judge
    ahead: bool = True  # prefill the prompt up to the answer (the question and ground truth) while the policy decodes

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"reward_judge.weight must be in [0, 1], got {self.weight}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"reward_judge.temperature must be in [0, 2], got {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"reward_judge.max_tokens must be >= 1, got {self.max_tokens}")
        if not self.yes or not self.no or self.yes in self.no or self.no in self.yes:
            raise ValueError(f"reward_judge.yes and .no must be two marks neither of which holds the other, got "
                             f"{self.yes!r} and {self.no!r}")


@dataclass
class AlgoConfig:
    """The RL algorithm and its loss."""

    name: Literal["grpo", "ppo"] = "grpo"
    scale_advantages: bool = True  # (grpo) false: Dr.GRPO (no division by the group's std)
    drop_uniform_groups: bool = False  # (grpo) skip groups whose rewards are all equal (counted in metrics)
    # which policy tokens train: all_turns, or final_turn (VTool-R1: only the turn after the last tool result)
    loss_mask: Literal["all_turns", "final_turn"] = "all_turns"
    # a trajectory cut by env.max_turns or env.max_tool_calls trains on nothing and leaves its group's statistics,
    # rather than being penalised (Mini-o3); counted as over_turn_masked
    mask_over_turns: bool = False
    epochs: int = 1  # passes over each rollout's trajectories
    mini_batches: int = 1  # optimizer steps per pass; the step's trajectories must divide evenly
    loss: LossConfig = field(default_factory=LossConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)  # (ppo) the value model, GAE's gamma and lambda
    # the KL reference's logprobs and (ppo) the critic's values computed on the trainer's thread in pieces of this
    # many policy tokens while each trajectory decodes, as OPPO streams to every downstream model (0: after the
    # rollout, whole). Same numbers either way; it pays where the trainer's device idles during the rollout
    stream_chunk_tokens: int = 0

    def __post_init__(self) -> None:
        if self.stream_chunk_tokens < 0:
            raise ValueError(f"algo.stream_chunk_tokens must be >= 0, got {self.stream_chunk_tokens}")


@dataclass
class LogConfig:
    """Where a run writes, and what it shows."""

    dir: str = "runs"  # runs/NAME-TIME/
    transcripts_every: int = 10  # steps between sample transcripts (0: never)
    plots_every: int = 1  # steps between rewriting reward.png / accuracy.png
    wandb: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "vlrl"
    progress: bool = True  # a progress bar with the key figures
    timeline: int = 0  # the first N RL steps drawn in timeline.json (Chrome trace) and timeline.png (0: none)

    def __post_init__(self) -> None:
        for name in ("transcripts_every", "plots_every", "timeline"):
            if getattr(self, name) < 0:
                raise ValueError(f"log.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class WarmStartConfig:
    """Supervised steps on an agent's trajectories before RL (the model must learn the format first)."""

    agent: str = ""  # "teacher", "scripted" or module:attr; empty: no warm start
    agent_args: dict[str, Any] = field(default_factory=dict)  # e.g. {p_tool: 0.8, p_correct: 0.6}
    samples: int = 512  # trajectories the agent plays once (task seed + 1); the steps draw batches from them
    steps: int = 100
    batch_size: int = 32
    lr: float = 1.0e-3
    save: bool = True  # write the warm-started model to <run>/warmstart/model (to evaluate beside RL's; a model's size)

    def __post_init__(self) -> None:
        for name in ("samples", "steps", "batch_size"):
            if self.agent and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 with a warm-start agent, got {getattr(self, name)}")


@dataclass
class HeldoutConfig:
    """Questions never trained on, answered greedily after the warm start and after RL."""

    samples: int = 0  # 0: no held-out evaluation
    seed: int = 1_000_003  # the task's seed for held-out questions (training uses `seed`)
    task_args: dict[str, Any] = field(default_factory=dict)  # merged into task.args, e.g. {split: test}
    agent: str = ""  # also score this agent (e.g. the warm start's teacher) on the same questions


@dataclass
class DistributedConfig:
    """Where the engines and the trainer run: this process (``none``), or Ray actors across a cluster."""

    backend: Literal["none", "ray"] = "none"  # none: one process, Ray is not imported
    address: str = ""  # (ray) "": start a local cluster for this run; "auto": join the running one; or HOST:PORT
    world_size: int = 1  # (ray, vlrl train) trainer ranks, data parallel over torch.distributed
    strategy: Literal["dp", "fsdp"] = "dp"  # dp: each rank holds the whole model and optimizer; fsdp: the ranks
    #                    shard the language model's weights, gradients and AdamW state (the vision tower stays whole)
    rank_resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})  # (ray) per rank, e.g. {GPU: 1}
    placement_timeout_s: float = 300.0  # (ray) how long to wait for the cluster to place the actors
    collective_timeout_s: float = 600.0  # (ray) a gradient all-reduce waiting longer than this fails the step
    max_restarts: int = 1  # times `vlrl train` resumes from the last checkpoint after losing a trainer rank or its
    #                         engine's process
    trainer_threads: int = 0  # torch CPU threads of the trainer's process; 0: torch's default (every core). With
    #                           the engine in a Ray replica of {CPU: 1}, 1 gives the engine and the trainer a core each

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.trainer_threads < 0:
            raise ValueError(f"trainer_threads must be >= 0, got {self.trainer_threads}")
        if self.strategy == "fsdp" and self.world_size < 2:
            raise ValueError(f"strategy fsdp shards over trainer ranks: it needs world_size >= 2, got {self.world_size}")
        for name in ("placement_timeout_s", "collective_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def check_backend(engine: EngineConfig, distributed: DistributedConfig) -> None:
    """Several replicas or trainer ranks need Ray; raises ConfigError naming the setting otherwise."""
    if distributed.backend == "none":
        for key, value in (("engine.replicas", engine.replicas), ("distributed.world_size", distributed.world_size)):
            if value > 1:
                raise ConfigError(f"{key} = {value} needs distributed.backend: ray")


OVERLAP_IMPORTANCE_CAP = 2.0  # the truncation of the importance weights of deferred tokens (verl's TIS default)


@dataclass
class TrainConfig:
    """`vlrl train`: RL on a task with an environment, an engine and the trainer."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    reward_judge: RewardJudgeConfig = field(default_factory=RewardJudgeConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    steps: int = 10
    seed: int = 0
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    resume: str = ""  # a checkpoint folder to continue from; auto: the newest whole checkpoint of a run of this name
    determinism: Literal["default", "strict"] = "default"  # strict: the same config and seed give bitwise the same
    #   trajectories, rewards, losses and weights however loaded the machine (engine.batch_invariant; sync, one
    #   process, the HF engine); default: the same on an idle machine, see the README

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        check_backend(self.engine, self.distributed)
        if self.algo.epochs < 1 or self.algo.mini_batches < 1:
            raise ValueError(f"algo.epochs and algo.mini_batches must be >= 1, got {self.algo.epochs}, "
                             f"{self.algo.mini_batches}")
        batch = self.rollout.prompts_per_step * self.rollout.group_size
        if batch % self.algo.mini_batches:
            raise ValueError(f"rollout.prompts_per_step x rollout.group_size = {batch} trajectories is not divisible "
                             f"by algo.mini_batches = {self.algo.mini_batches}")
        if self.model.device.startswith("cuda") and self.distributed.world_size > 1 \
                and not self.distributed.rank_resources.get("GPU"):
            raise ValueError(f"model.device {self.model.device!r} puts the trainer on GPUs: distributed.rank_resources "
                             f"must give each rank one ({{GPU: 1}}), got {self.distributed.rank_resources}")
        if self.algo.stream_chunk_tokens and self.distributed.strategy == "fsdp" and self.distributed.world_size > 1:
            raise ValueError(f"algo.stream_chunk_tokens = {self.algo.stream_chunk_tokens} runs the reference and the "
                             f"critic on rank 0 alone, which cannot hold a sharded model (distributed.strategy fsdp); "
                             f"use strategy dp or algo.stream_chunk_tokens 0")
        if self.distributed.strategy == "fsdp" and self.optim.lora_rank > 0:
            raise ValueError(f"distributed.strategy fsdp does not shard LoRA adapters (optim.lora_rank = "
                             f"{self.optim.lora_rank}); use strategy dp, whose ranks each hold the adapters")
        if self.rollout.decode_during_update and self.rollout.schedule != "overlap":
            raise ValueError(f"rollout.decode_during_update keeps the overlap scheduler's groups decoding through the "
                             f"update: it needs rollout.schedule overlap, got {self.rollout.schedule!r}")
        if self.algo.loss.importance_cap is None:
            self.algo.loss.importance_cap = OVERLAP_IMPORTANCE_CAP if self.rollout.schedule == "overlap" else 0.0
        if self.algo.name == "grpo" and self.rollout.group_size < 2:
            raise ValueError(f"rollout.group_size must be >= 2 for GRPO (advantages are relative within a group), "
                             f"got {self.rollout.group_size}")
        if self.determinism == "strict":
            self.engine.batch_invariant = True
            timed = {"engine.kind": (self.engine.kind, "hf"), "rollout.schedule": (self.rollout.schedule, "sync"),
                     "distributed.backend": (self.distributed.backend, "none"),
                     "algo.stream_chunk_tokens": (self.algo.stream_chunk_tokens, 0)}
            for key, (got, needed) in timed.items():
                if got != needed:  # where timing decides what shares a step or when a step closes
                    raise ValueError(f"determinism strict needs {key} {needed!r}, got {got!r}")


# phrases that mark a model revising itself (`vlrl eval`'s self-correction figures), matched as whole words, any case
REVISION_PHRASES = ("wait", "let me re-check", "let me recheck", "let me check again", "double-check",
                    "on second thought", "i made a mistake", "that is wrong", "let me look again", "actually")
SECOND_LOOK = ("Look at the image again and check your answer. If it is wrong, correct it. "
               "End with: FINAL ANSWER: <answer>")


@dataclass
class JudgeConfig(QuestionConfig):
    """Who scores each sampled answer in `vlrl eval` (P(Yes) to the question, as ``vlrl.rewards.verifier``)."""

    policy: bool = True  # self-verification: the policy scores its own answers, with and without the image
    external: str = ""  # a verifier model folder sharing the policy's tokenizer ("": none); a reward-model folder is
    #                     read by its scalar head
    # what else the policy's P(Yes) is asked with (vlrl.eval.run): only the question's images ("original"), only the
    # tools' images ("edited"), or the question and the bare final answer, without the reasoning ("answer_only")
    ablations: list[Literal["original", "edited", "answer_only"]] = field(default_factory=list)
    # generative verification (vlrl.eval.written): who also writes a check of each answer ending in a verdict
    generate: list[Literal["self", "external"]] = field(default_factory=list)
    generate_prompt: str = ""  # a Jinja file for the user turn (marker, yes, no); "": vlrl/eval/verify.jinja
    generate_marker: str = "VERDICT:"  # the verdict is the word after its last occurrence
    generate_yes: list[str] = field(default_factory=lambda: ["yes", "right", "correct"])
    generate_no: list[str] = field(default_factory=lambda: ["no", "wrong", "incorrect"])
    generate_max_tokens: int = 128
    generate_temperature: float = 0.0  # 0: greedy; else each verification is seeded by its request id

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.min_pixels or self.max_pixels) and not self.external:
            raise ValueError("min_pixels / max_pixels size the external verifier's images; there is none (external "
                             "is empty): the policy judges at model.min_pixels / max_pixels")
        if self.ablations and not self.policy:
            raise ValueError(f"judge.ablations {self.ablations} ask the policy's P(Yes), but judge.policy is false")
        if len(set(self.ablations)) != len(self.ablations):
            raise ValueError(f"judge.ablations names one twice: {self.ablations}")
        if "external" in self.generate and not self.external:
            raise ValueError("judge.generate names 'external' but judge.external is empty: name a verifier folder")
        if len(set(self.generate)) != len(self.generate):
            raise ValueError(f"judge.generate names a verifier twice: {self.generate}")
        if self.generate_max_tokens < 1 or not 0 <= self.generate_temperature <= 2:
            raise ValueError(f"judge.generate_max_tokens must be >= 1 and generate_temperature in [0, 2], got "
                             f"{self.generate_max_tokens} and {self.generate_temperature}")
        if not self.generate_marker.strip() or set(map(str.lower, self.generate_yes)) & set(
                map(str.lower, self.generate_no)) or not self.generate_yes or not self.generate_no:
            raise ValueError(f"judge.generate_marker must not be empty and generate_yes / generate_no must be two "
                             f"lists with no word in common, got {self.generate_marker!r}, {self.generate_yes}, "
                             f"{self.generate_no}")


@dataclass
class EvalConfig(SamplingConfig):
    """`vlrl eval`: N sampled trajectories per question, voted, verified and reported with 95% intervals."""

    name: str = "eval"
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    env: EnvConfig = field(default_factory=EnvConfig)  # env.tools: [] evaluates without tools
    task: TaskConfig = field(default_factory=TaskConfig)
    questions: int = 100  # the task's first questions under `seed`
    seed: int = 1_000_003  # the task's seed (the held-out seed of `vlrl train`)
    samples: int = 8  # N trajectories per question
    ks: list[int] = field(default_factory=list)  # the k of every "@k" figure; empty: 1, 2, 4, ... up to N
    greedy: bool = True  # also one greedy trajectory per question
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    reward_judge: RewardJudgeConfig = field(default_factory=RewardJudgeConfig)  # grades the answers (correct = its
    #                                                                              verdict) instead of the reward
    second_look: bool = False  # after each sampled answer, ask the policy to re-check it (self-correction)
    second_look_prompt: str = SECOND_LOOK
    revision_phrases: list[str] = field(default_factory=lambda: list(REVISION_PHRASES))  # self-correction's phrases
    subsets: int = 1000  # k-subsets per "-of-k" figure when there are more (else all, exactly)
    bootstrap: int = 1000  # resamples of the questions behind each 95% interval
    batch_questions: int = 8  # questions in flight at once; results are written after each
    transcripts: int = 3  # sample transcripts written for right and for wrong answers
    out: str = "runs/eval"  # results.jsonl, report.json / .md, plots; an interrupted run resumes here
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # engine.replicas on Ray

    def __post_init__(self) -> None:
        super().__post_init__()
        check_backend(self.engine, self.distributed)
        for name in ("questions", "samples", "subsets", "bootstrap", "batch_questions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.transcripts < 0:
            raise ValueError(f"transcripts must be >= 0, got {self.transcripts}")
        for k in self.ks:
            if k < 1:
                raise ValueError(f"ks: k must be >= 1, got {k}")
            if k > self.samples:
                raise ValueError(f"ks: k = {k} needs at least k samples per question, got samples (N) = "
                                 f"{self.samples}")
