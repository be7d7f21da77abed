"""One metrics contract: every figure a run logs per step, with its name, unit and meaning.

A step's figures are a ``StepRecord`` of typed sections, one per namespace:

    rollout/   what the step's trajectories did (tools, turns, lengths, finishes, drops)
    reward/    their reward and its parts
    verifier/  the verifier model: where its prefill ran (under decoding or after), its engine
    sched/     the overlap scheduler: groups started, carried, paused; staleness
    algo/      the algorithm's preparation of the batch (e.g. GRPO's uniform groups)
    loss/      the update: the loss and its terms, entropy, parity, grad norm, LR
    perf/      seconds of each phase, tokens per second, the engine's busy and bubble fractions
    engine/    the policy engine's own counters (a router: requests per replica, failovers)
    warmstart/ a supervised step of the warm start (warmstart.jsonl)

``StepRecord.flat()`` gives the names that metrics.jsonl and W&B both use
(``rollout/tool_call_rate``); a warm-start step is a ``WarmStartRecord`` (``warmstart/``).
``glossary()`` renders the table of docs/metrics.md from the same fields, so a figure
cannot be logged without its unit and meaning. Open families (a reward's parts, a loss's
terms, an engine's counters) are a field each, spread into ``namespace/key`` names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


def figure(unit: str, meaning: str, default: Any = 0.0) -> Any:
    """A dataclass field that is a logged figure: its unit and its meaning travel with it."""
    meta = {"unit": unit, "meaning": meaning}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def family(unit: str, meaning: str, key: str) -> Any:
    """A dict field whose entries are logged as figures of their own, ``namespace/<key>``."""
    return field(default_factory=dict, metadata={"unit": unit, "meaning": meaning, "family": key})


class Section:
    """A namespace of figures: a dataclass whose fields are ``figure`` or ``family`` fields."""

    NAMESPACE: ClassVar[str]

    def flat(self) -> dict[str, Any]:
        """``namespace/name`` -> value for every figure (a family's entries each under their own key)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if "family" not in f.metadata:
                out[f"{self.NAMESPACE}/{f.name}"] = value
                continue
            for key, entry in value.items():
                name = f"{self.NAMESPACE}/{key}"
                if name in out or key in {g.name for g in fields(self)}:  # type: ignore[arg-type]
                    raise ValueError(f"{type(self).__name__}.{f.name}: key {key!r} would hide the figure {name!r}")
                out[name] = entry
        return out


@dataclass
class RolloutFigures(Section):
    """What the step's trained trajectories did."""

    NAMESPACE = "rollout"
    trajectories: int = figure("count", "trajectories trained this step (whole groups)", 0)
    dropped: dict[str, int] = figure("count", "trajectories not trained, by reason (their group's request, episode "
                                     "or reward raised; staleness cap)", {})
    finish: dict[str, int] = figure("count", "trajectories by how they ended (answer, length, context, ...)", {})
    tool_call_rate: float = figure("fraction", "trajectories that called a tool at least once")
    tool_calls: float = figure("calls", "tool calls per trajectory")
    tool_error_rate: float = figure("fraction", "tool calls that failed (an error the model read)")
    tool_uses: dict[str, int] = figure("count", "tool calls by tool (code: python blocks)", {})
    tool_success: dict[str, float] = figure("fraction", "tool calls that ran without an error, by tool", {})
    parse_errors: float = figure("count", "actions per trajectory that did not parse")
    sandbox_restarts: int = figure("count", "sandbox processes started again after a crash or a hang (a worker, or an "
                                            "episode's own process)", 0)
    turns: float = figure("turns", "policy turns per trajectory, the answer's included")
    response_length: float = figure("tokens", "policy tokens per trajectory (every turn, whatever algo.loss_mask "
                                              "trains)")
    response_length_median: float = figure("tokens", "the median trajectory's policy tokens")
    response_length_max: int = figure("tokens", "the longest trajectory's policy tokens", 0)
    behavior_version: int = figure("version", "the oldest weight version that sampled a trained token", -1)


@dataclass
class RewardFigures(Section):
    """The reward of the step's trained trajectories."""

    NAMESPACE = "reward"
    mean: float = figure("reward", "mean reward (with a verifier weight: mixed with its score)")
    parts: dict[str, float] = family("reward", "mean of each part the reward returns (accuracy, format, verifier, "
                                     "...)", "<part>")


@dataclass
class VerifierFigures(Section):
    """The verifier model fed while the policy decodes (present when ``verifier.model`` is set)."""

    NAMESPACE = "verifier"
    early_tokens: int = figure("tokens", "verifier prefill done while the policy was still decoding", 0)
    late_tokens: int = figure("tokens", "verifier prefill done after the trajectory's last token", 0)
    hidden_fraction: float = figure("fraction", "early / (early + late): the verifier's work hidden under decoding")
    finish_s: float = figure("s", "per trajectory: from its last token to its verdict")
    chunk_tokens: int = figure("tokens", "policy tokens per piece streamed to the verifier (fixed, or tuned)", 0)
    engine: dict[str, float] = family("count", "the counters of the verifier's own engine, when it has one (as "
                                      "engine/<counter> are the policy engine's)", "<counter>")


@dataclass
class SchedFigures(Section):
    """How the step's batch was scheduled (``rollout.schedule: overlap``; sync: groups_started alone)."""

    NAMESPACE = "sched"
    groups_started: int = figure("groups", "groups that entered the rollout this step", 0)
    groups_carried: int = figure("groups", "groups in flight when the batch closed, carried to the next step", 0)
    requests_paused: int = figure("requests", "engine requests aborted at the close (their tokens kept)", 0)
    extra_groups: int = figure("groups", "groups in flight beyond prompts_per_step (Δ) this step", 0)
    deferred_fraction: float = figure("fraction", "carried / in flight at the close")
    staleness: dict[str, int] = figure("groups", "trained groups by steps carried over", {})
    token_staleness: dict[str, int] = figure("tokens", "trained policy tokens by weight versions behind the policy "
                                             "being updated (0: sampled by it)", {})
    response_length_finished: float = figure("tokens", "policy tokens of every trajectory that ended by the close "
                                             "(beside rollout/response_length: is closing early biased short?)")


@dataclass
class AlgoFigures(Section):
    """What the algorithm did preparing the batch."""

    NAMESPACE = "algo"
    prepared: dict[str, float] = family("count", "the algorithm's own counts (GRPO: uniform_groups_dropped, groups "
                                        "whose rewards all agree, when algo.drop_uniform_groups; "
                                        "over_turn_masked, trajectories cut by the turn limits and left out, when "
                                        "algo.mask_over_turns); with "
                                        "algo.stream_chunk_tokens, <model>_streamed_tokens and <model>_late_tokens "
                                        "for the KL reference and the critic: tokens computed while the trajectories "
                                        "decoded, and after the rollout", "<count>")


@dataclass
class LossFigures(Section):
    """The update (absent from a step whose batch was empty); several optimizer steps: their mean."""

    NAMESPACE = "loss"
    policy: float = figure("loss", "the policy loss (the algorithm's objective, KL included)")
    entropy: float = figure("nats", "the policy's entropy per policy token")
    parity: float = figure("nats", "mean abs(log pi_old - log mu) over engine-sampled tokens (trainer vs engine)")
    grad_norm: float = figure("norm", "the global gradient norm before clipping (several steps: the last's)")
    lr: float = figure("lr", "the learning rate (several steps: the last's)")
    policy_tokens: float = figure("tokens", "tokens the loss saw")
    optimizer_steps: int = figure("steps", "optimizer steps this rollout fed (epochs x mini-batches)", 1)
    terms: dict[str, float] = family("varies", "the objective's own figures per policy token (clip_fraction, "
                                     "ratio, kl, importance_weight) and a critic's (value_loss, value_grad_norm)",
                                     "<term>")


@dataclass
class PerfFigures(Section):
    """Where the step's time went."""

    NAMESPACE = "perf"
    step_s: float = figure("s", "the whole step")
    rollout_s: float = figure("s", "generation: decoding and tool calls, to the last trajectory's end")
    reward_s: float = figure("s", "rewarding after generation (sync schedule; else hidden in rollout_s)")
    prepare_s: float = figure("s", "the algorithm's prepare after the rollout: advantages and a critic's values "
                                   "(with algo.stream_chunk_tokens, only what was not streamed)")
    forward_s: float = figure("s", "the trainer's logprob forwards (the KL reference's too, unless streamed)")
    update_s: float = figure("s", "forward, backward and optimizer steps")
    critic_s: float = figure("s", "the critic's step (PPO)")
    sync_s: float = figure("s", "gathering the weights and loading them into the engine")
    tokens_per_s: float = figure("tokens/s", "policy tokens generated per second of rollout_s")
    engine_busy_fraction: float = figure("fraction", "share of the step with a policy request on the engine")
    bubble_ratio: float = figure("fraction", "share of the engine's batch slots left empty during the rollout")
    version: int = figure("version", "the weight version after the step's sync", 0)


@dataclass
class EngineFigures(Section):
    """The policy engine's own counters since the last step. The HF engine: where its thread's time went and the work
    it did for it (busy_s; decode_s, decode_steps, decode_rows, decode_positions; prefill_s, prefill_forwards,
    prefill_rows, prefill_positions, prefill_images; cache_s, cache_positions: ``vlrl.engines.hf.STATS`` says what
    each counts). A Ray router: replica_<k>_requests, replica_failovers, replica_losses, replica_restarts,
    replicas_alive, and its replicas' engine counters summed, as of the step's weight push."""

    NAMESPACE = "engine"
    counters: dict[str, float] = family("count", "one of the engine's counters", "<counter>")


@dataclass
class StepRecord:
    """One RL step's figures, section by section."""

    rollout: RolloutFigures
    reward: RewardFigures | None  # None: no trajectory trained this step
    sched: SchedFigures
    perf: PerfFigures
    algo: AlgoFigures = field(default_factory=AlgoFigures)
    loss: LossFigures | None = None  # None: no update (every group dropped)
    verifier: VerifierFigures | None = None  # None: no verifier
    engine: EngineFigures = field(default_factory=EngineFigures)

    def flat(self) -> dict[str, Any]:
        """The names metrics.jsonl and W&B use, with their values."""
        out: dict[str, Any] = {}
        for section in (self.rollout, self.reward, self.verifier, self.sched, self.algo, self.loss, self.perf,
                        self.engine):
            if section is not None:
                out |= section.flat()
        return out


@dataclass
class WarmStartRecord(Section):
    """One supervised step of the warm start (warmstart.jsonl)."""

    NAMESPACE = "warmstart"
    loss: float = figure("nats", "negative log-likelihood per policy token of the teacher's trajectories")
    token_p_over_half: float = figure("fraction", "policy tokens the model already gives p > 0.5")
    grad_norm: float = figure("norm", "the global gradient norm before clipping")
    lr: float = figure("lr", "the learning rate")
    update_s: float = figure("s", "forward, backward and the optimizer step")


def update_figures(update: dict[str, float]) -> tuple[LossFigures, dict[str, float]]:
    """An update's figures as the trainer and the algorithm return them --> the ``loss/`` section, and the seconds
    that are ``perf/`` fields (forward_s, update_s, critic_s)."""
    fixed = {f.name for f in fields(LossFigures)} - {"policy", "terms"}
    times = {f.name for f in fields(PerfFigures) if f.name.endswith("_s")}
    terms = {k: v for k, v in update.items() if k != "loss" and k not in fixed and k not in times}
    loss = LossFigures(policy=update["loss"], terms=terms, **{k: update[k] for k in fixed if k in update})
    return loss, {k: v for k, v in update.items() if k in times}


SECTIONS: tuple[type[Section], ...] = (RolloutFigures, RewardFigures, VerifierFigures, SchedFigures, AlgoFigures,
                                       LossFigures, PerfFigures, EngineFigures, WarmStartRecord)


def documented(name: str) -> bool:
    """Whether the glossary explains the logged figure ``name`` (a field's, or an entry of a family's namespace)."""
    namespace, _, key = name.partition("/")
    for section in SECTIONS:
        if section.NAMESPACE != namespace:
            continue
        for f in fields(section):  # type: ignore[arg-type]
            if f.name == key or "family" in f.metadata:
                return True
    return False


def glossary() -> str:
    """docs/metrics.md: every figure's name, unit and meaning, section by section."""
    lines = ["# Metrics", "", "Every figure a run logs, per step, in `metrics.jsonl` and W&B under the same name "
             "(warm-start steps: `warmstart.jsonl`). Generated from `vlrl/metrics.py` by "
             "`python -m vlrl.metrics > docs/metrics.md`; a test checks that this page is up to date.", ""]
    for section in SECTIONS:
        lines += [f"## `{section.NAMESPACE}/`", "", inspect.cleandoc(section.__doc__ or ""), "",
                  "| name | unit | meaning |", "|---|---|---|"]
        for f in fields(section):  # type: ignore[arg-type]
            name = f"{section.NAMESPACE}/{f.metadata.get('family', f.name)}"
            lines.append(f"| `{name}` | {f.metadata['unit']} | {f.metadata['meaning']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(glossary(), end="")
