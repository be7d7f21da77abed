"""`vlrl tools list | run`: every tool with its schema; one action in the sandbox, reported as one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vlrl.config import SandboxConfig

if TYPE_CHECKING:
    from vlrl.tool import ToolSpec

BUILTIN = ["chart_table_focus", "drawing", "bar_compare"]


def add_to(sub: argparse._SubParsersAction) -> None:
    tools = sub.add_parser("tools", help="inspect tools")
    tools_sub = tools.add_subparsers(dest="tools_command", required=True)
    listing = tools_sub.add_parser("list", help="every tool with its JSON schema")
    listing.add_argument("refs", nargs="*", default=BUILTIN,
                         help="tool references: names, modules, .py files, entry points (default: the built-ins)")
    listing.add_argument("--json", action="store_true", help="print the schemas as one JSON list")
    listing.set_defaults(run=run_list)
    one = tools_sub.add_parser("run", help="run one action in the sandbox and print one JSON object")
    action = one.add_mutually_exclusive_group(required=True)
    action.add_argument("--code", help="a Python file: calls tools on image_1, ... and display()s the result")
    action.add_argument("--call", help='a JSON tool call {"name": ..., "arguments": {...}} (or a .json file)')
    one.add_argument("--image", action="append", required=True, help="an input image (repeat: image_1, image_2, ...)")
    one.add_argument("--metadata", help="sample metadata as JSON, or a .json file (e.g. columns_bbox)")
    one.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds")
    one.add_argument("--out", default="tool-output", help="folder for the result images")
    one.add_argument("--tools", nargs="*", default=BUILTIN, help="tool references")
    one.set_defaults(run=run_one)


def run_list(args: argparse.Namespace) -> int:
    from vlrl.tool import load_tools

    print_tools(load_tools(args.refs), args.json)
    return 0


def run_one(args: argparse.Namespace) -> int:
    report = asyncio.run(run_action(args.tools, args.image, Path(args.out), args.timeout,
                                    code_file=args.code, call=args.call, metadata=args.metadata))
    print(json.dumps(report))
    return 0


def print_tools(tools: dict[str, ToolSpec], as_json: bool) -> None:
    """One line of signature and one of description per tool (metadata-bound arguments marked), or the schemas."""
    if as_json:
        print(json.dumps([spec.schema for spec in tools.values()], indent=2))
        return
    for spec in tools.values():
        props = spec.parameters["properties"]
        required = set(spec.parameters["required"])
        args = ", ".join(f"{n}{'' if n in required else '?'}: {p.get('type', 'any')}" for n, p in props.items())
        bound = ", ".join(f"{p} <- metadata[{k!r}]" for p, k in spec.metadata_params.items())
        print(f"{spec.name}({args})" + (f"   [{bound}]" if bound else ""))
        print(f"    {spec.description}")


def read_json_arg(value: str | None, what: str) -> Any:
    """A JSON value given inline or as a path to a .json file."""
    if not value:
        return {}
    text = Path(value).read_text() if value.endswith(".json") and Path(value).is_file() else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON ({e.msg}): {value[:80]!r}") from None


async def run_action(
    tools: Sequence[str], images: Sequence[str], out: Path, timeout: float,
    code_file: str | None = None, call: str | None = None, metadata: str | None = None,
) -> dict[str, Any]:
    """Run ``--code FILE`` or ``--call JSON`` on the images; write the result images into ``out``."""
    from vlrl.sandbox.pool import SandboxPool
    from vlrl.vision import read_image

    if (code_file is None) == (call is None):
        raise ValueError("give exactly one of --code FILE or --call JSON")
    pictures = [read_image(p) for p in images]
    meta = read_json_arg(metadata, "--metadata")
    async with SandboxPool(tools, SandboxConfig(workers=1, timeout_s=timeout)) as pool:
        if code_file is not None:
            result = await pool.code("cli", Path(code_file).read_text(), pictures, meta)
        else:
            request = read_json_arg(call, "--call")
            if not isinstance(request, dict) or not isinstance(request.get("name"), str):
                raise ValueError('--call must be {"name": ..., "arguments": {...}}')
            result = await pool.call("cli", request["name"], request.get("arguments", {}), pictures, meta)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, image in enumerate(result.images):
        path = out / f"output_{i + 1}.png"
        image.save(path)
        written.append(str(path))
    text = result.stdout + (result.text if result.text else "")
    return {"ok": result.ok, "images": written, "stdout": text, "error": result.error,
            "seconds": round(result.seconds, 4)}
