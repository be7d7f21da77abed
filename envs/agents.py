"""Agents without a model, to try a VisualToolEnv: episode --> text of the next policy turn.

- ``scripted``: an expert that focuses on what the question names (or outlines every
  category) or, where ``compare_bars`` is offered, enlarges the two bars the answer turns
  on, reads the result, and answers with the sample's answer. Its trajectories
  show the protocol end to end and serve as demonstrations for a supervised warm start.
- ``teacher``: the scripted expert made imperfect (tool use and accuracy below 1), the
  kind of traces a warm start imitates before RL has to do better.
- ``random``: a fuzzer. Each turn is a random tool call with arguments drawn from the
  schema, a random code block, malformed text, or a random answer; seeded.
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any, Literal, get_args

from vlrl.builtin.envs.visual_tool import ToolEpisode, label_names
from vlrl.builtin.tools.regions import TARGETS as FOCUS_TARGETS
from vlrl.registry import register

Confusion = Literal["value", "neighbor"]
CONFUSIONS = get_args(Confusion)
# metadata key -> (the focus tools' target, whether its first region is a header those tools keep)
TARGETS = {key: (target, keep_header) for target, (key, _, keep_header) in FOCUS_TARGETS.items()}
COMPARE = "compare_bars"  # vlrl.builtin.tools.bars, named here so reading it registers no tool


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def code_text(name: str, arguments: dict[str, Any], bound: dict[str, str], image: str = "image_1") -> str:
    args = ", ".join([image, *(f"{k}={v!r}" for k, v in arguments.items()), *(f"{k}={v}" for k, v in bound.items())])
    return f"```python\nedited = {name}({args})\ndisplay(edited)\n```"


@register("agent", "scripted")
class ScriptedAgent:
    """Focus on what the question is about, then answer correctly.

    ``brief``: no THOUGHT lines and no arguments left at their default, the shortest
    traces (every token costs time when a small model learns from them on a CPU).
    """

    def __init__(self, seed: int = 0, brief: bool = False):
        self.seed, self.brief = seed, brief

    def act(self, episode: ToolEpisode) -> str:
        traj = episode.trajectory
        if traj.actions or traj.turns > 0:
            return f"{self.final_thought(episode, edited=True)}FINAL ANSWER: {self.answer(episode)}"
        action = self.tool_call(episode) if self.wants_tool(episode) else None
        return action or f"{self.final_thought(episode, edited=False)}FINAL ANSWER: {self.answer(episode)}"

    def wants_tool(self, episode: ToolEpisode) -> bool:
        return True

    def final_thought(self, episode: ToolEpisode, edited: bool) -> str:
        return "" if self.brief or not edited else "THOUGHT: the edited image shows it.\n"

    def answer(self, episode: ToolEpisode) -> str:
        return episode.sample.answers[0]

    def tool_call(self, episode: ToolEpisode) -> str | None:
        """``compare_bars`` where the env offers it, else a focus tool; None without the boxes either needs."""
        if COMPARE in episode.tool_names:
            return self.compare(episode)
        return self.focus(episode)

    def focus(self, episode: ToolEpisode) -> str | None:
        """A focus-tool call on the labels the question names (or all of them), or None without boxes."""
        key = next((k for k in TARGETS if episode.bound.get(k)), None)
        if key is None:
            return None
        target, keep_header = TARGETS[key]
        labels = label_names(episode.bound[key], key)
        if keep_header:
            labels = labels[1:]  # the header row: the focus tools keep it anyway, and it is no category
        named = [label for label in labels if re.search(rf"\b{re.escape(label)}\b", episode.sample.question, re.I)]
        op = "mask" if named else "draw"
        thought = "" if self.brief else f"THOUGHT: I will {op} the {target.replace('_', ' ')} to read the image.\n"
        return thought + self.call_text(episode, f"focus_on_{target}_with_{op}",
                                        {f"{target}_to_focus_on": named or labels}, (f"all_{target}_bounding_boxes", key))

    def compare(self, episode: ToolEpisode) -> str:
        """A ``compare_bars`` call on the right label and the one closest to it in value, in the chart's order (so
        the order tells nothing), or on every bar when the sample has no data table."""
        values = asked_values(episode.sample.metadata)
        right = episode.sample.answers[0]
        if right in values and len(values) > 1:
            closest = closest_in_value(values, right)
            named = [c for c in values if c in (right, closest)]
        else:
            named = list(dict.fromkeys(label_names(episode.bound["bars_bbox"], "bars_bbox")))
        thought = "" if self.brief else "THOUGHT: I will enlarge the ends of the closest bars.\n"
        return thought + self.call_text(episode, COMPARE, {"bars_to_compare": named},
                                        ("all_bars_bounding_boxes", "bars_bbox"))

    def call_text(self, episode: ToolEpisode, name: str, arguments: dict[str, Any], boxes: tuple[str, str]) -> str:
        """The call in the env's action format (JSON when offered, else code); ``boxes``: (parameter, metadata key)."""
        if "json" in episode.env.config.action_formats:
            return tool_call_text(name, arguments if self.brief else {"image": "image_1", **arguments})
        return code_text(name, arguments, {boxes[0]: boxes[1]})


@register("agent", "teacher")
class TeacherAgent(ScriptedAgent):
    """An imperfect expert, as a weaker model's traces are: it calls the focus tool with
    probability ``p_tool`` and answers right with probability ``p_correct``, else with a
    plausible wrong answer (``plausible_wrong``: by ``confusion``, the label closest in value
    or the label next to the right one, or a number 10-25% off). Its answer may open with a
    THOUGHT (sentences of about 6 tokens), so its answers, and a model imitating them, have
    a long tail (the workloads of `vlrl bench overlap`): with ``cot_median`` > 0 every answer
    does, its length in sentences drawn from a lognormal of that median and log-scale
    ``cot_sigma``, at most ``cot_cap``; else, with probability ``p_verbose``, of 1 to
    ``verbose_lines`` sentences (uniform). Each episode's draws depend only on (seed, episode
    id), so its turns agree and runs repeat.
    """

    def __init__(self, seed: int = 0, p_tool: float = 0.8, p_correct: float = 0.6, brief: bool = False,
                 confusion: Confusion = "value", p_verbose: float = 0.0, verbose_lines: int = 40,
                 cot_median: float = 0.0, cot_sigma: float = 1.0, cot_cap: int = 200):
        super().__init__(seed, brief)
        if not (0 <= p_tool <= 1 and 0 <= p_correct <= 1 and 0 <= p_verbose <= 1):
            raise ValueError(f"p_tool, p_correct and p_verbose must be in [0, 1], got {p_tool}, {p_correct}, "
                             f"{p_verbose}")
        if confusion not in CONFUSIONS:
            raise ValueError(f"confusion must be one of {CONFUSIONS}, got {confusion!r}")
        if verbose_lines < 1 or cot_cap < 1:
            raise ValueError(f"verbose_lines and cot_cap must be >= 1, got {verbose_lines}, {cot_cap}")
        if cot_median < 0 or cot_sigma < 0:
            raise ValueError(f"cot_median and cot_sigma must be >= 0, got {cot_median}, {cot_sigma}")
        self.p_tool, self.p_correct, self.confusion = p_tool, p_correct, confusion
        self.p_verbose, self.verbose_lines = p_verbose, verbose_lines
        self.cot_median, self.cot_sigma, self.cot_cap = cot_median, cot_sigma, cot_cap

    def _rng(self, episode: ToolEpisode) -> random.Random:
        return random.Random(f"{self.seed}/{episode.id}")

    def wants_tool(self, episode: ToolEpisode) -> bool:
        return self._rng(episode).random() < self.p_tool

    def answer(self, episode: ToolEpisode) -> str:
        rng = self._rng(episode)
        rng.random()  # the tool draw
        right = episode.sample.answers[0]
        return right if rng.random() < self.p_correct else plausible_wrong(episode, right, rng, self.confusion)

    def final_thought(self, episode: ToolEpisode, edited: bool) -> str:
        lines = self.thought_lines(random.Random(f"{self.seed}/{episode.id}/verbose"))
        if not lines:
            return super().final_thought(episode, edited)
        return "THOUGHT:" + " I check the bars again." * lines + "\n"

    def thought_lines(self, rng: random.Random) -> int:
        """Sentences of the answer's THOUGHT (0: none)."""
        if self.cot_median > 0:
            return max(1, min(round(rng.lognormvariate(math.log(self.cot_median), self.cot_sigma)), self.cot_cap))
        return rng.randint(1, self.verbose_lines) if rng.random() < self.p_verbose else 0


def plausible_wrong(episode: ToolEpisode, right: str, rng: random.Random, confusion: Confusion = "value") -> str:
    """A wrong answer of the right kind, made as a weak reader makes it.

    A label, when the sample carries its data: with ``confusion`` "value" the label whose
    value is closest to the right label's (neighbours in value mixed up), with "neighbor"
    the label next to it on the axis or in the table, the following one or, for the last,
    the one before (a label read off by one). Both are consistent confusions, which
    imitation inherits and only a reward can correct. Without the data: another label of
    the image. A number: 10-25% off.
    """
    values = asked_values(episode.sample.metadata)
    if right in values and len(values) > 1:
        if confusion == "neighbor":
            order = list(values)
            at = order.index(right)
            return order[at + 1] if at + 1 < len(order) else order[at - 1]
        return closest_in_value(values, right)
    labels = [label for k, v in episode.bound.items() if k in TARGETS for label in label_names(v, k)]
    labels += [str(c) for c in episode.sample.metadata.get("table", {}).get("categories", [])]
    others = sorted({label for label in labels if label != right})
    if right in labels and others:
        return rng.choice(others)
    try:
        value = float(right)
    except ValueError:
        return rng.choice(others) if others else "unknown"
    wrong = value * rng.choice((0.75, 0.9, 1.1, 1.25)) + (rng.choice((-2, 2)) if abs(value) < 8 else 0)
    return f"{wrong:.1f}".rstrip("0").rstrip(".")


def closest_in_value(values: dict[str, float], label: str) -> str:
    """The other label whose value is closest to ``label``'s (the first such, in order)."""
    return min((c for c in values if c != label), key=lambda c: abs(values[c] - values[label]))


def asked_values(metadata: dict[str, Any]) -> dict[str, float]:
    """label -> value of the series (chart) or column (table) the question asks about; {} without the data."""
    try:
        if "series_asked" in metadata:
            table = metadata["table"]
            return {str(c): float(v) for c, v in zip(table["categories"], table["series"][metadata["series_asked"]])}
        if "column_asked" in metadata:
            header, *rows = metadata["cells"]
            column = header.index(metadata["column_asked"])
            return {str(row[0]): float(row[column]) for row in rows}
    except (KeyError, ValueError, TypeError, IndexError):
        pass
    return {}


@register("agent", "random")
class RandomAgent:
    """Random actions and answers, well-formed or not (for testing environments)."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, episode: ToolEpisode) -> str:
        rng, env = self.rng, episode.env
        tools = [env.tools[name] for name in sorted(episode.tool_names)]
        labels = [label for k, v in episode.bound.items() if k in TARGETS for label in label_names(v, k)]
        choice = rng.random()
        if choice < 0.2 or not tools:
            return f"FINAL ANSWER: {rng.choice(labels) if labels and rng.random() < 0.5 else rng.randint(0, 100)}"
        if choice < 0.3:
            return rng.choice(['<tool_call>{"name": ', "```python\ndisplay(\n```", "<tool_call>[1, 2]</tool_call>",
                               "```python\nprint('no image')\n```"])
        spec = rng.choice(tools)
        n_images = len(episode.trajectory.images)
        arguments = {}
        for name, schema in spec.parameters["properties"].items():
            if name in spec.image_params:
                arguments[name] = f"image_{rng.randint(1, n_images)}"
            elif name in spec.parameters["required"] or rng.random() < 0.3:
                arguments[name] = self._value(schema, labels)
        if "json" in env.config.action_formats and ("code" not in env.config.action_formats or rng.random() < 0.5):
            return tool_call_text(spec.name, arguments)
        image = arguments.pop(spec.image_params[0], "image_1") if spec.image_params else "image_1"
        return code_text(spec.name, arguments, dict(spec.metadata_params), image)

    def _value(self, schema: dict[str, Any], labels: list[str]) -> Any:
        rng = self.rng
        if "enum" in schema:
            return rng.choice(schema["enum"])
        if "anyOf" in schema:
            return self._value(rng.choice(schema["anyOf"]), labels)
        kind = schema.get("type")
        if kind == "array":
            if schema["items"].get("type") == "string":
                return rng.sample(labels, rng.randint(1, len(labels))) if labels else ["?"]
            return [self._value(schema["items"], labels) for _ in range(schema.get("minItems", 2))]
        if kind == "number":
            return round(rng.uniform(0, 400), 1)
        if kind == "integer":
            return rng.randint(0, 10)
        if kind == "boolean":
            return rng.random() < 0.5
        return rng.choice(labels) if labels else "?"
