"""Model text --> the answer it gives: one extraction for the environment, the rewards and evaluation.

Kept apart from any comparison, so an official metric can be applied to extracted
answers exactly as it is defined.
"""

from __future__ import annotations

import re

_FINAL = re.compile(r"FINAL ANSWER\s*:[ \t]*([^\n]*)", re.IGNORECASE)
# VTool-R1's closing word after its answer, and the sentence's period before it ("3. TERMINATE")
_TERMINATE = re.compile(r"\.?\s*\bTERMINATE\b.*$")
_BOXED = "\\boxed{"


def extract_answer(text: str) -> str:
    """The answer in ``text``, by the first rule that applies:

    1. after the last ``FINAL ANSWER:`` to the end of its line, stripped, without a closing
       ``TERMINATE`` and the period before it (VTool-R1's format: ``FINAL ANSWER: 3. TERMINATE``);
    2. inside the last ``\\boxed{...}`` (braces balanced), stripped;
    3. the last non-empty line, stripped, when the text has several lines;
    4. the text itself, unchanged (a bare prediction is compared as given).
    """
    marked = _marked(text)
    if marked is not None:
        return marked
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return lines[-1].strip()
    return text


def stated_answers(text: str) -> list[str]:
    """Every answer ``text`` states, in order: each ``FINAL ANSWER:`` line (as ``extract_answer`` reads the last),
    else each ``\\boxed{}``; empty ones left out. Several mean the text changed its answer, or repeated it."""
    found = [_TERMINATE.sub("", a).strip() for a in _FINAL.findall(text)] or [b.strip() for b in _all_boxed(text)]
    return [a for a in found if a]


def has_final_answer(text: str) -> bool:
    """Whether ``text`` states a non-empty answer with ``FINAL ANSWER:`` or ``\\boxed{}``."""
    return bool(_marked(text))


def _marked(text: str) -> str | None:
    """The stripped answer after the last ``FINAL ANSWER:``, else inside the last ``\\boxed{}``."""
    found = _FINAL.findall(text)
    if found:
        return _TERMINATE.sub("", found[-1]).strip()
    boxed = _last_boxed(text)
    return None if boxed is None else boxed.strip()


def _last_boxed(text: str) -> str | None:
    return _boxed_at(text, text.rfind(_BOXED))


def _all_boxed(text: str) -> list[str]:
    found, start = [], text.find(_BOXED)
    while start >= 0:
        inside = _boxed_at(text, start)
        if inside is not None:
            found.append(inside)
        start = text.find(_BOXED, start + 1)
    return found


def _boxed_at(text: str, start: int) -> str | None:
    """What the ``\\boxed{`` at ``start`` holds (braces balanced); None without one there, or unbalanced."""
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: not an answer
