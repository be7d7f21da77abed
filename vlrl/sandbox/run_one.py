"""`vlrl tools run`: one action in the sandbox, reported as one JSON object."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Sequence

from vlrl.generate import load_image
from vlrl.sandbox.pool import SandboxConfig, SandboxPool


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
    if (code_file is None) == (call is None):
        raise ValueError("give exactly one of --code FILE or --call JSON")
    pictures = [load_image(p) for p in images]
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


def main(args: Any) -> None:
    report = asyncio.run(run_action(args.tools, args.image, Path(args.out), args.timeout,
                                    code_file=args.code, call=args.call, metadata=args.metadata))
    print(json.dumps(report))
