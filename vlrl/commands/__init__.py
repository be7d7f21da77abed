"""The `vlrl` subcommands, one module each: its arguments, and the call into the library that runs it.

Every module has ``add_to(subparsers)``, which declares its parser (or parsers) with
``set_defaults(run=...)``; ``run(args) -> int`` is the exit status. A module imports torch,
an engine or a plug-in only inside ``run``, so a bad argument or config fails in a fraction
of a second.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def config_command(sub: argparse._SubParsersAction, name: str, what: str, example: str, overrides: str,
                   run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A subcommand run on a YAML config plus dotted overrides (``example``: the shipped config to start from)."""
    parser = sub.add_parser(name, help=what)
    parser.add_argument("config", help=f"YAML config (see {example})")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {overrides}")
    parser.set_defaults(run=run)
    return parser


def with_model(model: str | None, work: Callable[[Path], T], **tiny: Any) -> T:
    """``work(model)``, or ``work`` on a tiny model (``vlrl model tiny`` with ``tiny``) built in a temporary folder
    for the call."""
    if model:
        return work(Path(model))
    from vlrl.model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        return work(build_tiny_model(Path(tmp) / "tiny-vlm", **tiny))
