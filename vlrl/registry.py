"""Find tools, envs, tasks and rewards by name, so vlrl never imports them by name.

A reference is one of:
- a name registered with ``@register(kind)`` (by a module already imported),
- an entry point in the group ``vlrl.<kind>s`` of any installed package,
- ``package.module:attribute`` or ``path/to/file.py:attribute`` (a user's own file).
The built-in plug-ins in ``tools/``, ``envs/`` and ``tasks/`` use the same mechanism.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

Kind = Literal["tool", "env", "task", "reward", "agent"]
KINDS: tuple[Kind, ...] = ("tool", "env", "task", "reward", "agent")
F = TypeVar("F")

_registry: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


def register(kind: Kind, name: str | None = None) -> Callable[[F], F]:
    """Decorator: make ``obj`` resolvable as ``name`` (default: its ``__name__``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {list(KINDS)}")

    def deco(obj: F) -> F:
        key = name or getattr(obj, "__name__")
        existing = _registry[kind].get(key)
        if existing is not None and existing is not obj:
            raise ValueError(f"{kind} {key!r} is already registered by {existing!r}")
        _registry[kind][key] = obj
        return obj

    return deco


def registered(kind: Kind) -> dict[str, Any]:
    """A copy of what is registered under ``kind`` now."""
    return dict(_registry[kind])


def resolve(kind: Kind, ref: str) -> Any:
    """The object ``ref`` names; raises LookupError saying what was tried."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {list(KINDS)}")
    if ref in _registry[kind]:
        return _registry[kind][ref]
    for ep in metadata.entry_points(group=f"vlrl.{kind}s"):
        if ep.name == ref:
            return ep.load()
    if ":" in ref:
        module_ref, _, attr = ref.rpartition(":")
        module = import_ref(module_ref, kind, ref)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise LookupError(f"{kind} {ref!r}: module {module_ref!r} has no attribute {attr!r}") from None
    raise LookupError(
        f"unknown {kind} {ref!r}: not registered (registered: {sorted(_registry[kind])}), "
        f"not an entry point in group 'vlrl.{kind}s', and not of the form 'module:attribute'"
    )


def import_ref(module_ref: str, kind: str, ref: str) -> Any:
    """Import a module by dotted path or a ``.py`` file by path (once); LookupError naming ``ref``."""
    if module_ref.endswith(".py"):
        path = Path(module_ref).resolve()
        if not path.is_file():
            raise LookupError(f"{kind} {ref!r}: file {str(path)!r} does not exist")
        name = f"vlrl_user_{path.stem}_{abs(hash(str(path)))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_ref)
    except ModuleNotFoundError as e:
        raise LookupError(f"{kind} {ref!r}: cannot import module {module_ref!r} ({e})") from e
