"""The tool API: a typed Python function (or small class) --> a tool a model can call.

    @tool
    def zoom_in(image: Image.Image, box: Box, factor: float = 2.0) -> Image.Image:
        '''Crop ``box`` and enlarge it.

        Args:
            box: [x1, y1, x2, y2] in pixels.
            factor: how much to enlarge.
        '''

The docstring's first paragraph becomes the description and its ``Args:`` lines the
parameter descriptions; the signature becomes a JSON schema. ``PIL.Image.Image``
parameters take one of the trajectory's images (the model names it ``image_1``,
``image_2``, ...; the latest by default). Parameters annotated
``Annotated[T, Metadata("columns_bbox")]`` are bound from the sample's metadata and never
shown to the model. A tool returns an image, a string, or a ``ToolOutput``.
"""

from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

from PIL import Image

from vlrl.registry import import_ref, register, resolve
from vlrl.typecheck import TypeCheckError, conform, short

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


@dataclass(frozen=True)
class Metadata:
    """Marks a parameter as bound from ``Sample.metadata[key]`` (hidden from the model)."""

    key: str


@dataclass(frozen=True)
class ToolOutput:
    """What a tool returns to the trajectory: text for the model and images to show it."""

    text: str = ""
    images: tuple[Image.Image, ...] = ()


class ToolError(ValueError):
    """A call the tool cannot run: the message is shown to the model as ``error: ...``."""


class ToolDefinitionError(TypeError):
    """A function whose signature cannot be described as a tool."""


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool: its schema for the model, and how to bind and run a call."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the model-visible arguments
    target: Callable[..., Any]  # the function, or the class (instantiated per episode)
    image_params: tuple[str, ...]
    metadata_params: dict[str, str]  # parameter -> metadata key
    arg_types: dict[str, Any] = field(repr=False)

    @property
    def schema(self) -> dict[str, Any]:
        """The function-calling schema (OpenAI / Qwen style) shown in the system prompt."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                  "parameters": self.parameters}}

    @property
    def signature(self) -> str:
        """The Python call shown in code-action prompts; metadata parameters default to their variable."""
        parts = []
        for p in _call_parameters(self.target):
            if p.name in self.metadata_params:
                parts.append(f"{p.name}={self.metadata_params[p.name]}")
            elif p.name in self.image_params:
                parts.append(p.name)
            else:
                schema = self.parameters["properties"][p.name]
                default = "" if "default" not in schema else f" = {schema['default']!r}"
                optional = " | None" if schema.get("default", ...) is None else ""
                parts.append(f"{p.name}: {_py_type(schema)}{optional}{default}")
        return f"{self.name}({', '.join(parts)})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call a function tool directly, as if undecorated (class tools: ``instantiate()``)."""
        if inspect.isclass(self.target):
            raise TypeError(f"{self.name} is a class tool: call {self.name}.instantiate() once per episode")
        return self.target(*args, **kwargs)

    def instantiate(self) -> Callable[..., Any]:
        """A callable for one episode: the function itself, or a fresh instance of a class tool."""
        return self.target() if inspect.isclass(self.target) else self.target

    def bind(
        self,
        arguments: Mapping[str, Any],
        images: Sequence[Image.Image],
        metadata: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Keyword arguments for a call: checked model arguments, resolved images, bound metadata."""
        if not isinstance(arguments, Mapping):
            raise ToolError(f"{self.name}: arguments must be an object, got {type(arguments).__name__}")
        hidden = set(self.metadata_params) & set(arguments)
        if hidden:
            raise ToolError(f"{self.name}: {sorted(hidden)} come from the sample and cannot be passed")
        known = set(self.parameters["properties"])
        unknown = sorted(set(arguments) - known)
        if unknown:
            raise ToolError(f"{self.name}: unknown argument(s) {unknown}; expected {sorted(known)}")
        missing = sorted(set(self.parameters.get("required", ())) - set(arguments))
        if missing:
            raise ToolError(f"{self.name}: missing required argument(s) {missing}")
        kwargs = {}
        for name, value in arguments.items():
            if name in self.image_params:
                kwargs[name] = _pick_image(self.name, name, value, images)
            else:
                try:
                    kwargs[name] = conform(self.arg_types[name], value, f"{self.name}: argument {name!r}")
                except TypeCheckError as e:
                    raise ToolError(str(e)) from None
        for name in self.image_params:
            if name not in kwargs:
                if not images:
                    raise ToolError(f"{self.name}: no image to work on")
                kwargs[name] = images[-1]
        for name, key in self.metadata_params.items():
            if key not in metadata:
                raise ToolError(f"{self.name}: this sample has no {key!r} metadata")
            kwargs[name] = metadata[key]
        return kwargs


def tool(target: Any = None, *, name: str | None = None) -> Any:
    """Decorator: describe ``target`` as a tool and register it (kind ``tool``)."""

    def deco(obj: Any) -> ToolSpec:
        spec = describe(obj, name=name)
        register("tool", spec.name)(spec)
        return spec

    return deco(target) if target is not None else deco


def describe(obj: Any, name: str | None = None) -> ToolSpec:
    """The ToolSpec of a function or a class with ``__call__``; ToolDefinitionError if impossible."""
    fn = obj.__call__ if inspect.isclass(obj) else obj
    tool_name = name or obj.__name__
    if not callable(fn):
        raise ToolDefinitionError(f"tool {tool_name!r}: {obj!r} is not callable")
    doc = inspect.getdoc(obj) or (inspect.getdoc(fn) if inspect.isclass(obj) else None)
    if not doc:
        raise ToolDefinitionError(f"tool {tool_name!r} has no docstring: the model needs a description")
    description, arg_docs = _parse_doc(doc)
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as e:  # unresolvable annotations
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot read its annotations ({e})") from e
    props: dict[str, Any] = {}
    required: list[str] = []
    image_params: list[str] = []
    metadata_params: dict[str, str] = {}
    arg_types: dict[str, Any] = {}
    for p in _call_parameters(obj):
        where = f"tool {tool_name!r}, parameter {p.name!r}"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ToolDefinitionError(f"{where}: *args / **kwargs cannot be described")
        if p.name not in hints:
            raise ToolDefinitionError(f"{where}: needs a type annotation")
        tp = hints[p.name]
        meta = _metadata_key(tp)
        if meta is not None:
            metadata_params[p.name] = meta
            continue
        if tp is Image.Image:
            image_params.append(p.name)
            props[p.name] = {"type": "string", "description": arg_docs.get(
                p.name, "which image to use: image_1, image_2, ... (default: the latest)")}
            continue
        schema = _json_schema(tp, where)
        if p.name in arg_docs:
            schema["description"] = arg_docs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        else:
            schema["default"] = p.default
        props[p.name] = schema
        arg_types[p.name] = tp
    parameters = {"type": "object", "properties": props, "required": required}
    return ToolSpec(tool_name, description, parameters, obj, tuple(image_params), metadata_params, arg_types)


def load_tools(refs: Sequence[str]) -> dict[str, ToolSpec]:
    """The tools named by ``refs``: a tool name, ``module:attr``, or a module / ``.py`` file /
    entry point whose every ToolSpec is taken."""
    out: dict[str, ToolSpec] = {}
    for ref in refs:
        obj = _load(ref)
        specs = [obj] if isinstance(obj, ToolSpec) else [v for v in vars(obj).values() if isinstance(v, ToolSpec)]
        if not specs:
            raise LookupError(f"tool reference {ref!r} names {obj!r}, which holds no tools")
        for spec in specs:
            out[spec.name] = spec
    return out


def as_output(value: Any, tool_name: str) -> ToolOutput:
    """Normalize what a tool returned; ToolError for anything that is not an image or text."""
    if isinstance(value, ToolOutput):
        return value
    if isinstance(value, Image.Image):
        return ToolOutput(images=(value,))
    if isinstance(value, str):
        return ToolOutput(text=value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Image.Image) for v in value):
        return ToolOutput(images=tuple(value))
    raise ToolError(f"{tool_name} returned {type(value).__name__}, not an image, a string or a ToolOutput")


# ------------------------------------------------------------------------- helpers

_JSON = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_schema(tp: Any, where: str) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _json_schema(get_args(tp)[0], where)
    if tp in _JSON:
        return {"type": _JSON[tp]}
    if origin is Literal:
        values = list(get_args(tp))
        kinds = {type(v) for v in values}
        if len(kinds) != 1 or next(iter(kinds)) not in _JSON:
            raise ToolDefinitionError(f"{where}: Literal values must share one JSON type, got {values}")
        return {"type": _JSON[next(iter(kinds))], "enum": values}
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _json_schema(args[0], where)
        return {"anyOf": [_json_schema(a, where) for a in args]}
    if origin is list or tp is list:
        (elem,) = get_args(tp) or (None,)
        if elem is None:
            raise ToolDefinitionError(f"{where}: say what the list holds, e.g. list[str]")
        return {"type": "array", "items": _json_schema(elem, where)}
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _json_schema(args[0], where)}
        if args and len({a for a in args}) == 1:
            return {"type": "array", "items": _json_schema(args[0], where), "minItems": len(args),
                    "maxItems": len(args)}
        raise ToolDefinitionError(f"{where}: only tuples of one element type can be described, got {tp}")
    raise ToolDefinitionError(
        f"{where}: type {tp!r} cannot be described as JSON; use str, int, float, bool, Literal, list, "
        f"tuple, Optional, PIL.Image.Image, or bind it from metadata with Annotated[..., Metadata(key)]"
    )


def _call_parameters(obj: Any) -> list[inspect.Parameter]:
    """What a call passes: a function's parameters, or a tool class's ``__call__`` without ``self``."""
    if inspect.isclass(obj):
        return list(inspect.signature(obj.__call__).parameters.values())[1:]
    return list(inspect.signature(obj).parameters.values())


def _py_type(schema: Mapping[str, Any]) -> str:
    """A JSON schema written as the Python type a model reads in a signature."""
    if "enum" in schema:
        return "Literal[" + ", ".join(repr(v) for v in schema["enum"]) + "]"
    if "anyOf" in schema:
        return " | ".join(_py_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_py_type(schema['items'])}]"
    return {v: k.__name__ for k, v in _JSON.items()}.get(schema.get("type", ""), "Any")


def _metadata_key(tp: Any) -> str | None:
    if get_origin(tp) is Annotated:
        for extra in get_args(tp)[1:]:
            if isinstance(extra, Metadata):
                return extra.key
    return None


def _parse_doc(doc: str) -> tuple[str, dict[str, str]]:
    """Description (text before ``Args:`` / ``Returns:``) and per-argument descriptions."""
    parts = re.split(r"^(Args|Arguments|Parameters|Returns|Example|Examples):\s*$", doc, flags=re.M)
    description = " ".join(parts[0].split())
    args: dict[str, str] = {}
    for header, body in zip(parts[1::2], parts[2::2]):
        if header not in ("Args", "Arguments", "Parameters"):
            continue
        current = None
        for line in body.splitlines():
            m = re.match(r"^\s*(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1)
                args[current] = m.group(3).strip()
            elif current and line.strip():
                args[current] += " " + line.strip()
    return description, args


def _pick_image(tool_name: str, param: str, value: Any, images: Sequence[Image.Image]) -> Image.Image:
    m = re.fullmatch(r"image_(\d+)", str(value).strip())
    if not m or not 1 <= int(m.group(1)) <= len(images):
        raise ToolError(
            f"{tool_name}: argument {param!r} must name an image, image_1 to image_{len(images)}, got {short(value)}"
        )
    return images[int(m.group(1)) - 1]


def _load(ref: str) -> Any:
    if ref.endswith(".py") or (":" not in ref and "." in ref):
        return import_ref(ref, "tool", ref)
    return resolve("tool", ref)
