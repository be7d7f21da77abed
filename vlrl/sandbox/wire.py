"""Frames between the pool and a worker: ``VLRL`` + header length + JSON header + raw RGB images.

The header lists each image as ``[width, height]``; the image bytes follow in order. The
reader bounds every size before allocating, so a worker that writes garbage cannot make
the trainer allocate or parse without limit.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Awaitable, Callable, Sequence

from PIL import Image

MAGIC = b"VLRL"
MAX_HEADER = 1 << 20
MAX_IMAGE_PIXELS = 4096 * 4096


class WireError(ValueError):
    """A frame that breaks the format or its size limits."""


def encode(header: dict[str, Any], images: Sequence[Image.Image] = ()) -> bytes:
    rgb = [im.convert("RGB") for im in images]
    head = json.dumps({**header, "images": [list(im.size) for im in rgb]}).encode()
    if len(head) > MAX_HEADER:
        raise WireError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
    return b"".join([MAGIC, struct.pack("<I", len(head)), head, *(im.tobytes() for im in rgb)])


async def read_frame(read_exactly: Callable[[int], Awaitable[bytes]]) -> tuple[dict[str, Any], list[Image.Image]]:
    """Read one frame with ``read_exactly(n)`` (e.g. ``StreamReader.readexactly``)."""
    header, sizes, _ = await _read_header(read_exactly)
    return header, [Image.frombytes("RGB", (w, h), await read_exactly(w * h * 3)) for w, h in sizes]


async def read_raw(read_exactly: Callable[[int], Awaitable[bytes]]) -> tuple[dict[str, Any], bytes]:
    """One frame's header, and the whole frame's bytes to pass on unopened (its sizes checked as ``read_frame``'s)."""
    header, sizes, head = await _read_header(read_exactly)
    return header, head + await read_exactly(sum(w * h * 3 for w, h in sizes))


async def _read_header(read_exactly: Callable[[int], Awaitable[bytes]]
                       ) -> tuple[dict[str, Any], list[tuple[int, int]], bytes]:
    """The header, its images' sizes, and the bytes read so far; every size bounded before anything is allocated."""
    prefix = await read_exactly(8)
    if prefix[:4] != MAGIC:
        raise WireError(f"bad frame start {prefix[:4]!r}")
    (n,) = struct.unpack("<I", prefix[4:])
    if n > MAX_HEADER:
        raise WireError(f"header of {n} bytes exceeds {MAX_HEADER}")
    head = await read_exactly(n)
    try:
        header = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("images", []), list):
        raise WireError("header must be an object with an 'images' list")
    sizes = []
    for size in header.get("images", []):
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise WireError(f"bad image size {size!r}")
        w, h = size
        if w * h > MAX_IMAGE_PIXELS:
            raise WireError(f"image of {w}x{h} exceeds {MAX_IMAGE_PIXELS} pixels")
        sizes.append((w, h))
    return header, sizes, prefix + head
