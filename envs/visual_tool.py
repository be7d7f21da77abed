"""VisualToolEnv: Sample --> Episode in which policy turns edit the image with sandboxed tools.

``reset`` renders the first prompt through the model's chat template: a system prompt
made from the tools' schemas (``templates/system.jinja``), the sample's images, and its
question with the labels the focus tools accept (``templates/question.jinja``). Each
``step`` reads one finished policy turn: a turn without an action is the final answer;
otherwise its actions run in the sandbox in order, and their results
(``templates/observation.jinja`` plus the images they return) come back as a tool turn
rendered by the same chat template, so image placeholders and images stay matched.
Hitting a limit ends the episode with a named reason (``Trajectory.finish_reason``); so does
an action that does not parse, with ``env.invalid_action: end``.

Tools are offered per sample: one whose metadata (e.g. ``columns_bbox``) the sample
lacks is neither described nor callable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
from PIL import Image

from vlrl.builtin.envs.actions import Action, ToolCall, parse_turn
from vlrl.config import EnvConfig
from vlrl.env import Observation, Step, TranscriptEntry
from vlrl.registry import register
from vlrl.sandbox.pool import ActionResult, SandboxPool
from vlrl.tool import ToolSpec, load_tools
from vlrl.types import ActionRecord, Completion, EndReason, Sample, Segment, Trajectory
from vlrl.vision import VisionInputs, chat_prompt_ids, followup_ids

TEMPLATES = Path(__file__).parent / "templates"


@register("env", "visual_tool")
class VisualToolEnv:
    """Sample --> ToolEpisode. ``async with`` starts and stops the sandbox pool all episodes share."""

    def __init__(self, config: EnvConfig, tokenizer: Any, vision: VisionInputs):
        self.config = config
        self.tokenizer = tokenizer
        self.vision = vision
        self.tools = load_tools(config.tools)
        self.im_end: int = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.end_ids = {self.im_end, tokenizer.eos_token_id}
        if 0 < config.tool_image_max_pixels < vision.min_pixels:
            raise ValueError(f"env.tool_image_max_pixels={config.tool_image_max_pixels} is below the processor's "
                             f"smallest image ({vision.min_pixels} pixels)")
        if config.templates and not Path(config.templates).is_dir():
            raise ValueError(f"env.templates {config.templates!r} is not a folder (relative paths start at "
                             f"{Path.cwd()})")
        search = [config.templates, str(TEMPLATES)] if config.templates else [str(TEMPLATES)]
        self._jinja = jinja2.Environment(loader=jinja2.FileSystemLoader(search), undefined=jinja2.StrictUndefined,
                                         trim_blocks=True, autoescape=False)
        self._jinja.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False)
        self.pool: SandboxPool | None = None

    async def __aenter__(self) -> "VisualToolEnv":
        self.pool = SandboxPool(self.config.tools, self.config.sandbox)
        await self.pool.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    def reset(self, sample: Sample, episode_id: str) -> "ToolEpisode":
        """Open an episode on ``sample``; ValueError (naming the sample) if it cannot fit the limits."""
        return ToolEpisode(self, sample, episode_id)

    def offered(self, metadata: Mapping[str, Any]) -> list[ToolSpec]:
        """The tools a sample supports: those whose every metadata key it has (and not empty)."""
        return [t for t in self.tools.values() if all(metadata.get(k) for k in t.metadata_params.values())]

    def render(self, template: str, **variables: Any) -> str:
        try:
            return self._jinja.get_template(f"{template}.jinja").render(**variables).strip()
        except jinja2.TemplateError as e:
            raise ValueError(f"prompt template {template}.jinja: {e}") from e


class ToolEpisode:
    """One trajectory in a VisualToolEnv: finished policy turn --> tool observation or done."""

    def __init__(self, env: VisualToolEnv, sample: Sample, episode_id: str):
        cfg = env.config
        self.env, self.sample, self.id = env, sample, episode_id
        if len(sample.images) > cfg.max_images:
            raise ValueError(f"sample {sample.id!r}: {len(sample.images)} images exceed env.max_images={cfg.max_images}")
        tools = env.offered(sample.metadata)
        self.tool_names = {t.name for t in tools}
        keys = sorted({k for t in tools for k in t.metadata_params.values()})
        self.bound = {k: sample.metadata[k] for k in keys}  # what the sandbox binds; never shown
        variables = [f"image_{i + 1}" for i in range(len(sample.images))] + keys
        system = env.render(
            "system", formats=cfg.action_formats, max_turns=cfg.max_turns, variables=variables,
            tools=[{"name": t.name, "description": t.description, "schema": t.schema, "signature": t.signature}
                   for t in tools],
        )
        question = env.render("question", question=sample.question,
                              labels=[[k, label_names(sample.metadata[k], f"sample {sample.id!r}: {k}")] for k in keys])
        user = [{"type": "image"}] * len(sample.images) + [{"type": "text", "text": question}]
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        visual = sum(env.vision.token_count(im) for im in sample.images)
        if cfg.max_visual_tokens and visual > cfg.max_visual_tokens:
            raise ValueError(f"sample {sample.id!r}: its images take {visual} visual tokens, over "
                             f"env.max_visual_tokens={cfg.max_visual_tokens}")
        ids = chat_prompt_ids(env.tokenizer, env.vision, messages, sample.images)
        if len(ids) >= cfg.max_context_tokens:
            raise ValueError(f"sample {sample.id!r}: its prompt of {len(ids)} tokens does not fit "
                             f"env.max_context_tokens={cfg.max_context_tokens}")
        self.trajectory = Trajectory(episode_id, sample.id, [Segment("prompt", tuple(ids), images=sample.images)])
        self.transcript = [TranscriptEntry("system", system), TranscriptEntry("user", question, sample.images)]
        self._reason: EndReason | None = None
        self._released = False

    @property
    def done(self) -> bool:
        return self._reason is not None

    async def step(self, turn: Completion) -> Step:
        """Append ``turn`` (a finished generation) and act on it."""
        if self.done:
            raise RuntimeError(f"episode {self.id!r} already ended ({self._reason})")
        if turn.finish_reason not in ("stop", "length"):
            raise ValueError(f"episode {self.id!r}: step() takes a finished turn, got finish_reason "
                             f"{turn.finish_reason!r} (resume an aborted generation first)")
        cfg, traj = self.env.config, self.trajectory
        traj.add_policy(turn)
        n = traj.turns
        closed = bool(turn.token_ids) and turn.token_ids[-1] == self.env.im_end
        text = self._text(turn.token_ids)
        self.transcript.append(TranscriptEntry("assistant", text))
        if turn.finish_reason == "length":
            return await self._end("length")
        parsed = parse_turn(text, cfg.action_formats)
        if parsed.is_final:
            traj.answer = parsed.answer
            return await self._end("answer")
        traj.actions += [ActionRecord(n, "invalid", "", False, error) for error in parsed.errors]
        if parsed.errors and cfg.invalid_action == "end":
            return await self._end("invalid_action")
        if n >= cfg.max_turns:
            return await self._end("max_turns")
        ran = sum(a.kind != "invalid" for a in traj.actions)
        if ran + len(parsed.actions) > cfg.max_tool_calls:
            return await self._end("max_tool_calls")
        results: list[tuple[ActionResult, list[str]]] = []
        new_images: list[Image.Image] = []
        for action in parsed.actions:
            result = await self._run(action, [*traj.images, *new_images])
            first = len(traj.images) + len(new_images) + 1
            results.append((result, [f"image_{first + i}" for i in range(len(result.images))]))
            new_images += result.images
            traj.actions.append(ActionRecord(
                n, "call" if isinstance(action, ToolCall) else "code",
                action.name if isinstance(action, ToolCall) else "", result.ok, result.error,
                result.seconds, len(result.images), result.worker_replaced,
            ))
        results += [(ActionResult(False, error=error), []) for error in parsed.errors]
        if len(traj.images) + len(new_images) > cfg.max_images:
            return await self._end("image_budget")
        fitted = self._fit(new_images)
        if fitted is None:
            return await self._end("visual_budget")
        new_images = fitted
        obs = self._observation(results, new_images, closed, turns_left=cfg.max_turns - n)
        if len(traj.token_ids) + len(obs.token_ids) >= cfg.max_context_tokens:
            return await self._end("context")
        traj.add_observation(obs.token_ids, obs.images)
        self.transcript.append(TranscriptEntry("tool", obs.text, obs.images))
        return Step(obs, done=False)

    async def close(self) -> None:
        """Drop the episode's tool state in the sandbox (safe to call twice)."""
        if not self._released and self.env.pool is not None:
            self._released = True
            await self.env.pool.end_episode(self.id)

    # ------------------------------------------------------------------ internals

    async def _end(self, reason: EndReason) -> Step:
        self._reason = self.trajectory.finish_reason = reason
        await self.close()
        return Step(None, done=True, reason=reason)

    def _text(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        while ids and ids[-1] in self.env.end_ids:
            ids.pop()
        return self.env.tokenizer.decode(ids, skip_special_tokens=False)

    def _fit(self, images: list[Image.Image]) -> list[Image.Image] | None:
        """A turn's tool images at ``env.tool_image_max_pixels`` and within what is left of the trajectory's visual
        tokens (an equal share each, downscaled where over it); None when one would not fit at its smallest."""
        cfg, vision = self.env.config, self.env.vision
        if cfg.tool_image_max_pixels:
            area = (vision.patch * vision.merge) ** 2  # pixels per visual token
            tokens = max(cfg.tool_image_max_pixels, vision.min_pixels + area - 1) // area  # >= the smallest image
            images = [vision.fit(im, tokens) for im in images]  # type: ignore[misc]
        if not cfg.max_visual_tokens or not images:
            return images
        left = cfg.max_visual_tokens - sum(vision.token_count(im) for im in self.trajectory.images)
        if sum(vision.token_count(im) for im in images) <= left:
            return images
        fitted = [vision.fit(im, left // len(images)) for im in images]
        return None if any(im is None for im in fitted) else fitted  # type: ignore[return-value]

    async def _run(self, action: Action, images: Sequence[Image.Image]) -> ActionResult:
        pool = self.env.pool
        if pool is None:
            raise RuntimeError("VisualToolEnv is not started: use `async with env:` around its episodes")
        if not isinstance(action, ToolCall):
            return await pool.code(self.id, action.code, images, self.bound)
        if action.name not in self.tool_names:
            return ActionResult(False, error=f"unknown tool {action.name!r}; available: {sorted(self.tool_names)}")
        return await pool.call(self.id, action.name, action.arguments, images, self.bound)

    def _observation(self, results: Sequence[tuple[ActionResult, list[str]]], images: Sequence[Image.Image],
                     closed: bool, turns_left: int) -> Observation:
        env, limit = self.env, self.env.config.max_observation_chars
        messages, texts = [], []
        for i, (r, names) in enumerate(results):
            text = env.render("observation", ok=r.ok, error=_cap(r.error or "", limit), text=_cap(r.text, limit),
                              stdout=_cap(r.stdout, limit), images=names,
                              turns_left=turns_left if i == len(results) - 1 else 0)
            content = [{"type": "text", "text": text}] + [{"type": "image"}] * len(names)
            messages.append({"role": env.config.observation_role, "content": content})
            texts.append(text)
        ids = ([] if closed else [env.im_end]) + followup_ids(env.tokenizer, env.vision, messages, images)
        return Observation(tuple(ids), tuple(images), "\n\n".join(texts))


def label_names(boxes: Any, where: str) -> list[str]:
    """The labels of labelled boxes (``{label: box}`` or ``[{"label": ...}, ...]``), in order."""
    if isinstance(boxes, Mapping):
        return [str(k) for k in boxes]
    if isinstance(boxes, Sequence) and not isinstance(boxes, str):
        if all(isinstance(b, Mapping) and "label" in b for b in boxes):
            return [str(b["label"]) for b in boxes]
    raise ValueError(f"{where}: expected labelled boxes ({{label: box}} or a list of {{label, x1, ...}}), "
                     f"got {type(boxes).__name__}")


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more characters cut]"
