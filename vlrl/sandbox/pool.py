"""SandboxPool: (tool call | code, images, metadata) --> ActionResult, in pre-started workers.

All I/O is asyncio (pipes to the worker processes), so the event loop never blocks on a
tool. An episode sticks to one worker, and runs in a process of its own there (forked from
the worker: see ``vlrl.sandbox.worker``), so a class tool keeps its state across the
episode's calls and no action sees what another episode's did; an action that ends its
episode's process gets an error the model can read, and a worker that times out or breaks
the protocol is killed and replaced.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from vlrl.config import SandboxConfig
from vlrl.sandbox.wire import WireError, encode, read_frame

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds vlrl/: the workers import it from there


class SandboxUnavailable(RuntimeError):
    """The isolation the pool needs is missing on this machine."""


@dataclass(frozen=True)
class ActionResult:
    """What one action produced; ``error`` is shown to the model as ``error: ...``."""

    ok: bool
    text: str = ""
    images: tuple[Image.Image, ...] = ()
    stdout: str = ""
    error: str | None = None
    seconds: float = 0.0
    worker_replaced: bool = False  # the worker died or hung and was replaced, or the episode's process ended


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    episodes: set[str] = field(default_factory=set)
    log: Path | None = None


class SandboxPool:
    """A pool of sandboxed workers that run model-written actions. Use ``async with``."""

    def __init__(self, tools: Sequence[str], config: SandboxConfig = SandboxConfig()):
        self.tools = [_absolute(ref) for ref in tools]
        self.config = config
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            if not config.allow_unsandboxed:
                raise SandboxUnavailable(
                    "bubblewrap (bwrap) is not installed, so model-written code cannot be isolated: install it "
                    "(Debian/Ubuntu: apt-get install bubblewrap) or set sandbox.allow_unsandboxed=true to run "
                    "actions with resource limits only"
                )
            warnings.warn("SANDBOX DISABLED: bubblewrap is missing; model-written code runs without isolation",
                          RuntimeWarning, stacklevel=2)
        if os.getuid() != 0:
            warnings.warn("sandbox: not running as root, so the workers share your uid instead of one each: the "
                          "process limit that keeps an action from forking counts every process you own, and a "
                          "worker's actions can signal your other processes outside bubblewrap's PID namespace",
                          RuntimeWarning, stacklevel=2)
        self._slots = [_Slot(i) for i in range(config.workers)]
        self._where: dict[str, _Slot] = {}
        self._logdir = Path(tempfile.mkdtemp(prefix="vlrl-sandbox-"))
        self.restarts = 0

    async def __aenter__(self) -> "SandboxPool":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the tools."""
        await asyncio.gather(*(self._spawn(slot) for slot in self._slots))

    async def close(self) -> None:
        for slot in self._slots:
            await self._kill(slot)
        shutil.rmtree(self._logdir, ignore_errors=True)

    async def call(self, episode: str, tool: str, arguments: Mapping[str, Any],
                   images: Sequence[Image.Image], metadata: Mapping[str, Any]) -> ActionResult:
        """Run one JSON tool call."""
        return await self._run(episode, {"op": "call", "tool": tool, "arguments": dict(arguments),
                                         "metadata": dict(metadata)}, images)

    async def code(self, episode: str, code: str, images: Sequence[Image.Image],
                   metadata: Mapping[str, Any]) -> ActionResult:
        """Run one Python code block; the images it ``display()``s are the result."""
        return await self._run(episode, {"op": "code", "code": code, "metadata": dict(metadata)}, images)

    async def end_episode(self, episode: str) -> None:
        """Drop the episode's tool state (class tools) in its worker."""
        slot = self._where.get(episode)
        if slot is None:
            return
        await self._run(episode, {"op": "end_episode"}, ())  # a worker that fails here is replaced too
        del self._where[episode]
        slot.episodes.discard(episode)

    def worker_pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.returncode is None]

    # ------------------------------------------------------------------ internals

    async def _run(self, episode: str, request: dict[str, Any], images: Sequence[Image.Image]) -> ActionResult:
        slot = self._where.get(episode)
        if slot is None:
            slot = min(self._slots, key=lambda s: len(s.episodes))
            slot.episodes.add(episode)
            self._where[episode] = slot
        request["episode"] = episode
        async with slot.lock:
            start = time.perf_counter()
            if slot.proc is None:  # killed when an earlier action was cancelled
                self.restarts += 1
                await self._spawn(slot)
            try:
                header, out_images = await self._exchange(slot, request, images, self.config.timeout_s)
            except asyncio.CancelledError:
                # the reply may still arrive and would answer the next request: drop the worker
                self._kill_now(slot)
                raise
            except asyncio.TimeoutError:
                error = f"the action ran past its {self.config.timeout_s:g} s time limit and was stopped"
                return await self._replace(slot, error, start)
            except (EOFError, asyncio.IncompleteReadError, ConnectionError, WireError) as e:
                if slot.proc is not None and not isinstance(e, WireError):
                    try:  # the channel closed because the worker is dying: learn how it ended
                        await asyncio.wait_for(slot.proc.wait(), 2.0)
                    except asyncio.TimeoutError:
                        pass
                return await self._replace(slot, self._death_note(slot, e), start)
        if not isinstance(header.get("ok"), bool):
            return ActionResult(False, error="the sandbox returned a malformed reply", seconds=time.perf_counter() - start)
        return ActionResult(
            ok=header["ok"], text=str(header.get("text", "")), images=tuple(out_images),
            stdout=str(header.get("stdout", "")), error=header.get("error"), seconds=time.perf_counter() - start,
            worker_replaced=header.get("restarted") is True,
        )

    async def _exchange(self, slot: _Slot, request: dict[str, Any], images: Sequence[Image.Image],
                        timeout: float) -> tuple[dict[str, Any], list[Image.Image]]:
        proc = slot.proc
        if proc is None or proc.returncode is not None:
            raise EOFError("the worker is not running")
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(encode(request, images))
        await asyncio.wait_for(proc.stdin.drain(), timeout)
        return await asyncio.wait_for(read_frame(proc.stdout.readexactly), timeout)

    async def _replace(self, slot: _Slot, error: str, start: float) -> ActionResult:
        await self._kill(slot)
        self.restarts += 1
        await self._spawn(slot)
        return ActionResult(False, error=error, seconds=time.perf_counter() - start, worker_replaced=True)

    def _death_note(self, slot: _Slot, error: BaseException) -> str:
        code = slot.proc.returncode if slot.proc is not None else None
        if isinstance(error, WireError):
            return f"the action broke the sandbox's channel ({error})"
        if self.bwrap is not None and code is not None and code > 128:
            code = 128 - code  # bubblewrap reports a child killed by signal N as exit status 128 + N
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            reason = {"SIGXCPU": "it used up its CPU time", "SIGSEGV": "it crashed the interpreter",
                      "SIGKILL": "it was killed (out of memory?)"}.get(name, f"signal {name}")
            return f"the action ended the sandbox worker: {reason}"
        return f"the action ended the sandbox worker (exit code {code})"

    async def _spawn(self, slot: _Slot) -> None:
        cfg = {"tools": self.tools, "slot": slot.index, "cpu_seconds": self.config.cpu_seconds,
               "memory_mb": self.config.memory_mb, "max_file_mb": self.config.max_file_mb,
               "max_output": self.config.max_output_chars}
        argv = [sys.executable, "-m", "vlrl.sandbox.worker", json.dumps(cfg)]
        slot.log = self._logdir / f"worker-{slot.index}.log"
        with open(slot.log, "wb") as log:
            slot.proc = await asyncio.create_subprocess_exec(
                *(self._isolation() + argv), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=log, start_new_session=True, env=None if self.bwrap else self._env(),
            )
        try:
            header, _ = await asyncio.wait_for(read_frame(slot.proc.stdout.readexactly),  # type: ignore[union-attr]
                                               self.config.start_timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, WireError) as e:
            await self._kill(slot)
            detail = slot.log.read_text(errors="replace")[-2000:] if slot.log.exists() else ""
            raise RuntimeError(f"sandbox worker {slot.index} did not start ({e!r}): {detail}") from None
        if not header.get("ready"):
            await self._kill(slot)
            raise RuntimeError(f"sandbox worker {slot.index} cannot load tools {self.tools}: {header.get('error')}")

    async def _kill(self, slot: _Slot) -> None:
        proc = self._kill_now(slot)
        if proc is not None:
            await proc.wait()

    def _kill_now(self, slot: _Slot) -> asyncio.subprocess.Process | None:
        """Signal the worker's process group and detach it from the slot (no waiting)."""
        proc, slot.proc = slot.proc, None
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return proc

    def _isolation(self) -> list[str]:
        """The bubblewrap command line (empty without bubblewrap)."""
        if self.bwrap is None:
            return []
        args = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--perms", "1777", "--tmpfs", "/tmp", "--chdir", "/tmp",
                "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--die-with-parent", "--new-session", "--clearenv"]
        for key, value in self._env().items():
            args += ["--setenv", key, value]
        # hidden: the home directory (keys, tokens) and the host's /tmp; what Python and the
        # tools need from under them is bound back read-only
        hidden = [Path("/tmp")]
        home = Path.home().resolve()
        if home != Path("/") and home.is_dir():
            args += ["--perms", "0755", "--tmpfs", str(home)]
            hidden.append(home)
        made: set[Path] = set()
        for path in sorted(self._needed_paths()):
            root = next((h for h in hidden if h in path.parents), None)
            if root is None:
                continue
            for parent in reversed(path.parents):  # traversable directories down to the bind
                if root in parent.parents and parent not in made:
                    args += ["--perms", "0755", "--dir", str(parent)]
                    made.add(parent)
            args += ["--ro-bind", str(path), str(path)]
        return args

    def _needed_paths(self) -> set[Path]:
        paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), PACKAGE_ROOT}
        paths |= {Path(p).resolve() for p in sys.path if p and Path(p).is_dir()}
        for ref in self.tools:  # a user's own tool file
            module = ref.rpartition(":")[0] if ":" in ref else ref
            if module.endswith(".py"):
                paths.add(Path(module).resolve().parent)
        # drop paths nested in another kept path: one bind covers them
        return {p for p in paths if not any(q in p.parents for q in paths)}

    def _env(self) -> dict[str, str]:
        """The whole environment of a worker: nothing of the trainer's (no tokens, no keys)."""
        path = os.pathsep.join([str(PACKAGE_ROOT), *(p for p in sys.path[1:] if p)])
        return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1",
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _absolute(ref: str) -> str:
    """A tool reference with a ``.py`` file made absolute (workers run in their own /tmp)."""
    module, sep, attr = ref.rpartition(":") if ":" in ref else (ref, "", "")
    if module.endswith(".py"):
        return str(Path(module).resolve()) + sep + attr
    return ref
