"""Model text --> actions: JSON tool calls and Python code blocks, or a final answer.

Two formats, in the order they appear in a turn:
- ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen / Hermes style;
  several per turn allowed; ``arguments`` may also be a JSON string of an object);
- a fenced ```python block (VTool-R1 / ReFOCUS style) that calls tools and ``display()``s.
A turn without either is a final answer (``vlrl.answer.extract_answer``). Every malformed action becomes an error
message the model will read; nothing here raises on model text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Collection, Literal

from vlrl.answer import extract_answer

TOOL_OPEN, TOOL_CLOSE, FENCE_END = "<tool_call>", "</tool_call>", "```"
ActionFormat = Literal["json", "code"]
_OPENERS = {"json": r"<tool_call>", "code": r"```(?:python|py)[ \t]*\r?\n"}


@dataclass(frozen=True)
class ToolCall:
    """One JSON tool call: a tool name and its (unchecked) arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class CodeAction:
    """One Python code block that compiles (it runs later, in the sandbox)."""

    code: str


Action = ToolCall | CodeAction


@dataclass(frozen=True)
class ParsedTurn:
    """What one model turn asked for."""

    actions: tuple[Action, ...]
    errors: tuple[str, ...]  # one per malformed action, shown to the model as "error: ..."
    answer: str | None  # the final answer, when the turn holds no action at all
    trailing: str = ""  # text after the last action (not run; the model should stop there)

    @property
    def is_final(self) -> bool:
        return self.answer is not None


def parse_turn(text: str, formats: Collection[ActionFormat] = ("json", "code")) -> ParsedTurn:
    """Split a model turn into actions, errors, or a final answer.

    Only the action ``formats`` given are recognized; the other one reads as plain text.
    """
    unknown = sorted(set(formats) - set(_OPENERS))
    if unknown or not formats:
        raise ValueError(f"action formats must be a non-empty subset of {sorted(_OPENERS)}, got {sorted(formats)}")
    start = re.compile("|".join(_OPENERS[f] for f in sorted(formats)))
    actions: list[Action] = []
    errors: list[str] = []
    pos = 0
    count = 0
    while (m := start.search(text, pos)) is not None:
        count += 1
        kind, closer, parse = ("tool call", TOOL_CLOSE, _tool_call) if m.group() == TOOL_OPEN else (
            "code block", FENCE_END, _code)
        end = text.find(closer, m.end())
        if end < 0:
            errors.append(f"{kind} {count} has no closing {closer}")
            pos = len(text)
            break
        parsed = parse(text[m.end() : end], count)
        (errors if isinstance(parsed, str) else actions).append(parsed)  # type: ignore[arg-type]
        pos = end + len(closer)
    if count == 0:
        return ParsedTurn((), (), extract_answer(text))
    return ParsedTurn(tuple(actions), tuple(errors), None, text[pos:].strip())


def _tool_call(body: str, n: int) -> ToolCall | str:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return f"tool call {n} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    if not isinstance(obj, dict):
        return f"tool call {n} must be a JSON object with \"name\" and \"arguments\", got {type(obj).__name__}"
    extra = sorted(set(obj) - {"name", "arguments"})
    if extra:
        return f"tool call {n} has unexpected key(s) {extra}; use only \"name\" and \"arguments\""
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return f"tool call {n} needs a \"name\" string"
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models encode the arguments object as a string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return f"tool call {n} ({name}): \"arguments\" is a string that is not valid JSON ({e.msg})"
    if not isinstance(args, dict):
        return f"tool call {n} ({name}): \"arguments\" must be an object, got {type(args).__name__}"
    return ToolCall(name, args)


def _code(code: str, n: int) -> CodeAction | str:
    try:
        compile(code, f"<code block {n}>", "exec")
    except SyntaxError as e:
        return f"code block {n} does not compile: line {e.lineno}: {e.msg}"
    except ValueError as e:  # e.g. null bytes
        return f"code block {n} does not compile: {e}"
    if not code.strip():
        return f"code block {n} is empty"
    return CodeAction(code)
