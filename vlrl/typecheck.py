"""JSON-shaped values (from YAML or from a model) checked against Python annotations.

One implementation serves the config loader and the tool API: both need the same
answer to "is this value a ``list[str]`` / ``Literal[...]`` / ``float | None`` / a
dataclass?", with an error that names where the value sits.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Annotated, Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints


class TypeCheckError(ValueError):
    """A value that does not fit its annotation; the message starts with its location."""


def conform(tp: Any, value: Any, where: str, *, numbers_from_strings: bool = False) -> Any:
    """``value`` as type ``tp`` (lists become tuples, ints become floats, mappings become
    dataclasses), or TypeCheckError naming ``where``.

    ``numbers_from_strings`` accepts "1e-6" for a float: YAML 1.1 reads it as a string.
    """
    kw = {"numbers_from_strings": numbers_from_strings}
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        return conform(get_args(tp)[0], value, where, **kw)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where, **kw)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return conform(arg, value, where, **kw)
            except TypeCheckError:
                continue
        raise TypeCheckError(f"{where}: {short(value)} matches none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise TypeCheckError(f"{where}: {short(value)} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeCheckError(f"{where}: expected a list, got {type(value).__name__} {short(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) > 1:
            if len(value) != len(args):
                raise TypeCheckError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(conform(a, v, f"{where}[{i}]", **kw) for i, (a, v) in enumerate(zip(args, value)))
        elem = args[0] if args else Any
        items = [conform(elem, v, f"{where}[{i}]", **kw) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise TypeCheckError(f"{where}: expected a mapping, got {type(value).__name__} {short(value)}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): conform(val_tp, v, _join(where, str(k)), **kw) for k, v in value.items()}
    if tp is float:
        if numbers_from_strings and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeCheckError(f"{where}: expected a number, got {type(value).__name__} {short(value)}")
        return float(value)
    if tp in (int, str, bool):
        if type(value) is not tp:
            raise TypeCheckError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {short(value)}")
        return value
    raise TypeCheckError(f"{where}: unsupported type {tp}")


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dataclass(cls: Any, data: Any, where: str, **kw: Any) -> Any:
    if not isinstance(data, Mapping):
        raise TypeCheckError(
            f"{where or 'config'}: expected a mapping for {cls.__name__}, got {type(data).__name__} {short(data)}"
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise TypeCheckError(f"unknown key {_join(where, str(key))!r}; known keys here: {sorted(fields)}")
    hints = get_type_hints(cls)
    kwargs = {name: conform(hints[name], value, _join(where, name), **kw) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # bounds checked in __post_init__
        raise TypeCheckError(f"{where or 'config'}: {e}") from e


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
