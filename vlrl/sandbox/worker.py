"""A sandbox worker: ``python -m vlrl.sandbox.worker CONFIG_JSON`` (started by SandboxPool).

Loads the tools, drops to its slot's own uid (when started as root), caps processes,
memory, CPU time, file size and open files, moves the protocol off fds 0 / 1 (which
then point to /dev/null, so stray writes cannot corrupt it), says ready, and then
answers one request at a time.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

from PIL import Image

from vlrl.sandbox.wire import MAX_IMAGE_PIXELS, encode, read_frame
from vlrl.tool import ToolError, ToolOutput, ToolSpec, as_output, load_tools

BASE_UID = 60000


class CappedText(io.TextIOBase):
    """stdout for actions: keeps the first ``limit`` characters, counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.size = limit, [], 0

    def write(self, s: str) -> int:
        room = self.limit - self.size
        if room > 0:
            self.parts.append(s[:room])
        self.size += len(s)
        return len(s)

    def text(self) -> str:
        out = "".join(self.parts)
        return out if self.size <= self.limit else out + f"\n[... {self.size - self.limit} more characters cut]"


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.tools: dict[str, ToolSpec] = load_tools(cfg["tools"])
        self.cpu_seconds: float = cfg["cpu_seconds"]
        self.max_output: int = cfg["max_output"]
        self.episodes: dict[str, dict[str, Any]] = {}  # episode -> tool name -> instance

    def handle(self, header: dict[str, Any], images: list[Image.Image]) -> tuple[dict[str, Any], list[Image.Image]]:
        op = header.get("op")
        if op == "end_episode":
            self.episodes.pop(str(header.get("episode")), None)
            return {"ok": True}, []
        out = CappedText(self.max_output)
        start = time.perf_counter()
        self._limit_cpu()
        try:
            sys.stdout = sys.stderr = out
            if op == "call":
                result = self._call(header, images)
            elif op == "code":
                result = self._code(header, images)
            else:
                raise ToolError(f"unknown request {op!r}")
            error = None
        except ToolError as e:
            result, error = ToolOutput(), str(e)
        except MemoryError:
            result, error = ToolOutput(), "the action ran out of memory"
        except RecursionError:
            result, error = ToolOutput(), "the action recursed too deeply"
        except BaseException as e:  # SystemExit, KeyboardInterrupt, anything the model's code raises
            result, error = ToolOutput(), _describe(e)
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        for im in result.images:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                result, error = ToolOutput(), f"an output image of {im.width}x{im.height} is too large"
                break
        reply = {"ok": error is None, "error": error, "text": result.text, "stdout": out.text(),
                 "seconds": time.perf_counter() - start}
        return reply, list(result.images)

    def _instance(self, episode: str, name: str) -> Any:
        spec = self.tools.get(name)
        if spec is None:
            raise ToolError(f"unknown tool {name!r}; available: {sorted(self.tools)}")
        per_episode = self.episodes.setdefault(episode, {})
        if name not in per_episode:
            per_episode[name] = spec.instantiate()
        return per_episode[name]

    def _call(self, header: dict[str, Any], images: list[Image.Image]) -> ToolOutput:
        name = header.get("tool")
        fn = self._instance(str(header.get("episode")), str(name))
        kwargs = self.tools[name].bind(header.get("arguments", {}), images, header.get("metadata", {}))
        return as_output(fn(**kwargs), name)

    def _code(self, header: dict[str, Any], images: list[Image.Image]) -> ToolOutput:
        episode = str(header.get("episode"))
        shown: list[Image.Image] = []

        def display(image: Any) -> None:
            if not isinstance(image, Image.Image):
                raise ToolError(f"display() takes a PIL image, got {type(image).__name__}")
            shown.append(image)

        scope: dict[str, Any] = {"__builtins__": builtins, "__name__": "__action__", "display": display}
        scope.update({name: self._instance(episode, name) for name in self.tools})
        scope.update({f"image_{i + 1}": im for i, im in enumerate(images)})
        scope.update(header.get("metadata", {}))
        exec(compile(header.get("code", ""), "<action>", "exec"), scope)
        if not shown:
            raise ToolError("the code displayed no image: end it with display(<the edited image>)")
        return ToolOutput(images=tuple(shown))

    def _limit_cpu(self) -> None:
        """CPU seconds for the next action on top of what the worker used so far (SIGXCPU past it)."""
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime + self.cpu_seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def _describe(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"the code called exit({e.code!r})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "<action>"]
    where = f" (line {frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}{where}: {e}"


def _confine(cfg: dict[str, Any]) -> None:
    """Own uid per slot, one process, capped memory / file size / open files."""
    if os.getuid() == 0:
        uid = BASE_UID + int(cfg["slot"])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # no fork, no threads
    memory = int(cfg["memory_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(cfg["max_file_mb"]) << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    async def read_exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = os.read(requests, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def send(header: dict[str, Any], images: list[Image.Image]) -> None:
        data = memoryview(encode(header, images))
        while data:
            data = data[os.write(replies, data) :]

    try:
        worker = Worker(cfg)
        _confine(cfg)
    except BaseException as e:  # report why this worker cannot serve, then stop
        send({"ready": False, "error": f"{type(e).__name__}: {e}"}, [])
        return

    send({"ready": True, "tools": sorted(worker.tools)}, [])
    while True:
        try:
            header, images = _run_sync(read_frame(read_exactly))
        except EOFError:
            return
        send(*worker.handle(header, images))


def _run_sync(coro: Any) -> Any:
    """Drive a coroutine that never suspends (its reads block instead) to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the frame reader suspended")


if __name__ == "__main__":
    main()
