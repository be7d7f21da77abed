"""Self-correction inside a trajectory: where a model revises itself while it reasons.

Three signs, each counted on its own (a trajectory may show several):
- ``answer``: it stated an answer (``FINAL ANSWER:`` or ``\\boxed{}``, in any of its turns)
  and later stated a different one (by the reward's equivalence, as votes are counted);
- ``phrase``: its text holds one of the revision phrases ("wait", "let me re-check", …;
  ``revision_phrases`` in the eval config, ``vlrl.config.REVISION_PHRASES`` by default),
  matched as whole words, any case;
- ``tool_recall``: it called a tool again in a later turn, after an earlier call's result.
The study this follows (arXiv 2506.17417) asks whether such "aha" behaviour brings accuracy;
the report splits accuracy by it and counts answers a revision fixed or broke.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from vlrl.answer import stated_answers
from vlrl.types import ActionRecord

EXCERPT_CHARS = 600  # of a revised trajectory's text, kept for the report's examples


def find_revisions(turns: Sequence[str], actions: Sequence[ActionRecord], phrases: Sequence[str],
                   same: Callable[[str, str], bool]) -> dict[str, Any]:
    """The revision signs of one trajectory, from its policy turns' text and its actions.

    ``same(a, b)``: whether two answers count as one. Returns ``kinds`` (the signs found, in
    the order above), ``phrases`` (those matched), ``first`` and ``last`` (the first and the
    last answer stated, None without one) and ``changed`` (whether the last differs from the first).
    """
    stated = [answer for turn in turns for answer in stated_answers(turn)]
    first, last = (stated[0], stated[-1]) if stated else (None, None)
    changed = first is not None and any(not same(answer, first) for answer in stated[1:])
    text = "\n".join(turns)
    matched = [p for p in phrases if re.search(rf"(?<!\w){re.escape(p)}(?!\w)", text, re.IGNORECASE)]
    ran = [a.turn for a in actions if a.kind != "invalid"]
    recalled = any(turn > ran[0] for turn in ran) if ran else False
    kinds = [kind for kind, found in (("answer", changed), ("phrase", matched), ("tool_recall", recalled)) if found]
    return {"kinds": kinds, "phrases": matched, "first": first, "last": last, "changed": changed}


def excerpt(turns: Sequence[str]) -> str:
    """A revised trajectory's policy text for the report: its turns, cut to ``EXCERPT_CHARS``."""
    text = "\n---\n".join(t.strip() for t in turns)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + " […]"
