"""A sandbox worker: ``python -m vlrl.sandbox.worker CONFIG_JSON`` (started by SandboxPool).

Loads the tools, drops to its slot's own uid (when started as root), caps memory, file
size and open files, moves the protocol off fds 0 / 1 (which then point to /dev/null, so
stray writes cannot corrupt it), says ready, and then answers one request at a time.

No action runs in the worker itself. Each episode gets a process of its own, forked from
the worker as it was when it loaded the tools, on the episode's first action: its calls
and code run there, one at a time, its class tools keep their state there, and whatever an
action does to the interpreter (a patched module, a replaced builtin) stays there and ends
with the episode (``end_episode``). An episode's process closes every descriptor but its
own two pipes, may not fork or start threads (RLIMIT_NPROC 1), cannot be traced or read
by the others (not dumpable), and has its CPU time per action capped; if an action kills
it, the action's reply says so and the episode's next action starts a fresh process.
"""

from __future__ import annotations

import builtins
import ctypes
import io
import json
import os
import resource
import signal
import sys
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from vlrl.sandbox.wire import MAX_IMAGE_PIXELS, WireError, encode, read_frame, read_raw
from vlrl.tool import ToolError, ToolOutput, ToolSpec, as_output, load_tools

BASE_UID = 60000
EPISODE_PROCESSES = 64  # per worker; past it the least recently used episode's process ends (its state with it)
PR_SET_DUMPABLE = 4


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
    """Own uid per slot, capped memory / file size / open files (an episode's process: see ``_seal``)."""
    if os.getuid() == 0:
        uid = BASE_UID + int(cfg["slot"])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    memory = int(cfg["memory_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(cfg["max_file_mb"]) << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _seal(keep: tuple[int, int]) -> None:
    """An episode's process, just forked: only its own pipes open, no fork or thread (its uid already runs more
    than one process), not dumpable (no other process of the uid may trace it or read its memory)."""
    low, high = sorted(keep)
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 64)
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


@dataclass
class _Episode:
    pid: int
    requests: int  # the worker writes the episode's requests here
    replies: int  # and reads its replies here


def _pipe_reader(fd: int) -> Callable[[int], Any]:
    async def read_exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    return read_exactly


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Dispatcher:
    """The worker's loop: each request to its episode's process (forked on first use), the reply back."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.episodes: OrderedDict[str, _Episode] = OrderedDict()

    def handle(self, header: dict[str, Any], frame: bytes) -> bytes:
        """The reply frame to the request ``frame`` (whose header is ``header``), passed through unopened."""
        episode = str(header.get("episode"))
        if header.get("op") == "end_episode":
            self._end(episode)
            return encode({"ok": True})
        proc = self.episodes.get(episode) or self._fork(episode)
        self.episodes.move_to_end(episode)
        try:
            _write_all(proc.requests, frame)
            return _run_sync(read_raw(_pipe_reader(proc.replies)))[1]
        except (EOFError, BrokenPipeError, WireError) as e:
            how = self._end(episode)
            reason = "it broke the reply's format" if isinstance(e, WireError) else how
            return encode({"ok": False, "error": f"the action ended its episode's process ({reason}); the episode's "
                                                 f"next action starts a fresh one, its tools' state anew", "text": "",
                           "stdout": "", "restarted": True})

    def _fork(self, episode: str) -> _Episode:
        if len(self.episodes) >= EPISODE_PROCESSES:
            self._end(next(iter(self.episodes)))
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the episode's process: it never returns
            code = 0
            try:
                os.close(requests_write)
                os.close(replies_read)
                _seal((requests_read, replies_write))
                read = _pipe_reader(requests_read)
                while True:
                    reply = self.worker.handle(*_run_sync(read_frame(read)))
                    _write_all(replies_write, encode(*reply))
            except EOFError:  # the worker closed the pipe: the episode is over
                pass
            except BaseException:
                code = 1
            os._exit(code)
        os.close(requests_read)
        os.close(replies_write)
        self.episodes[episode] = _Episode(pid, requests_write, replies_read)
        return self.episodes[episode]

    def _end(self, episode: str) -> str:
        """End the episode's process (if it has one); how it ended."""
        proc = self.episodes.pop(episode, None)
        if proc is None:
            return "it had none"
        os.close(proc.requests)
        os.close(proc.replies)
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(proc.pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGKILL:
            name = signal.Signals(os.WTERMSIG(status)).name
            return {"SIGXCPU": "it used up its CPU time", "SIGSEGV": "it crashed the interpreter"}.get(
                name, f"signal {name}")
        if os.WIFEXITED(status):
            return f"exit code {os.WEXITSTATUS(status)}"
        return "it was stopped"


def main() -> None:
    cfg = json.loads(sys.argv[1])
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def send(header: dict[str, Any], images: list[Image.Image]) -> None:
        _write_all(replies, encode(header, images))

    try:
        dispatcher = Dispatcher(Worker(cfg))
        _confine(cfg)
    except BaseException as e:  # report why this worker cannot serve, then stop
        send({"ready": False, "error": f"{type(e).__name__}: {e}"}, [])
        return

    send({"ready": True, "tools": sorted(dispatcher.worker.tools)}, [])
    read = _pipe_reader(requests)
    while True:
        try:
            header, frame = _run_sync(read_raw(read))
        except EOFError:
            return
        _write_all(replies, dispatcher.handle(header, frame))


def _run_sync(coro: Any) -> Any:
    """Drive a coroutine that never suspends (its reads block instead) to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the frame reader suspended")


if __name__ == "__main__":
    main()
