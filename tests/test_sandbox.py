"""The sandbox against hostile programs, and its normal service."""

from __future__ import annotations

import asyncio
import os
import socket
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from vlrl.builtin.tools import focus
from vlrl.config import SandboxConfig
from vlrl.sandbox.pool import SandboxPool

TIMEOUT, CPU = 3.0, 1.5
ROOT = Path(__file__).resolve().parents[1]
COLS = [{"label": "A", "x1": 0, "y1": 0, "x2": 59, "y2": 79}, {"label": "B", "x1": 60, "y1": 0, "x2": 119, "y2": 79}]

HOSTILE_TOOLS = '''
from PIL import Image
from vlrl.tool import tool

@tool
def returns_int(x: int) -> int:
    """Return a number instead of an image."""
    return x

@tool
def explodes(x: int) -> Image.Image:
    """Raise."""
    raise RuntimeError(f"tool blew up on {x}")

@tool
def giant(side: int) -> Image.Image:
    """Return a huge image."""
    return Image.new("RGB", (side, side))

@tool
class Tally:
    """Count calls within one episode."""

    def __init__(self):
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return str(self.n)
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pool with the built-ins and a file of hostile tools, plus the traps the suite checks."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "hostile_tools.py").write_text(HOSTILE_TOOLS)
    secret_file = Path.home() / ".vlrl_test_secret"
    secret_file.write_text("s3cret-file")
    os.environ["VLRL_TEST_SECRET"] = "s3cret-env"
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    loop = asyncio.new_event_loop()
    config = SandboxConfig(workers=2, timeout_s=TIMEOUT, cpu_seconds=CPU, memory_mb=1024, max_output_chars=10_000)
    pool = SandboxPool(["chart_table_focus", "drawing", str(folder / "hostile_tools.py")], config)
    loop.run_until_complete(pool.start())
    yield {"pool": pool, "loop": loop, "server": server, "folder": folder}
    loop.run_until_complete(pool.close())
    loop.close()
    server.close()
    secret_file.unlink()
    del os.environ["VLRL_TEST_SECRET"]


def run_code(world, code: str, images=None, metadata=None, episode="hostile"):
    images = images if images is not None else [Image.new("RGB", (120, 80), "gray")]
    return world["loop"].run_until_complete(world["pool"].code(episode, textwrap.dedent(code), images, metadata or {}))


def run_call(world, tool: str, arguments: dict, images=None, metadata=None, episode="calls"):
    images = images if images is not None else [Image.new("RGB", (120, 80), "gray")]
    return world["loop"].run_until_complete(world["pool"].call(episode, tool, arguments, images, metadata or {}))


HOSTILE_CODE = [
    ("infinite loop", "while True:\n    pass", "time limit|CPU time"),
    ("sleeping forever", "import time\ntime.sleep(3600)", "time limit"),
    ("C-level CPU burn", "sum(range(10**13))", "CPU time|time limit"),
    ("fork bomb", "import os\nwhile True:\n    os.fork()", "BlockingIOError"),
    ("spawning a shell", "import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > /tmp/x'])", "Error"),
    ("os.system", "import os\nassert os.system('echo hi') == 0, 'shell refused'", "shell refused"),
    ("starting threads", "import threading\nthreading.Thread(target=print).start()", "can't start new thread"),
    ("memory bomb", "x = bytearray(10**10)", "out of memory"),
    ("slow memory bomb", "x = []\nwhile True:\n    x.append(' ' * 10**7)", "out of memory|CPU time"),
    ("deep recursion", "def f(n):\n    return f(n + 1)\nf(0)", "recursed too deeply"),
    ("os._exit", "import os\nos._exit(3)", "exit code 3"),
    ("sys.exit", "import sys\nsys.exit(2)", r"exit\(2\)"),
    ("killing the sandbox's parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "Error|ended the sandbox"),
    ("writing outside the working directory", "open({evil!r}, 'w').write('x')", "Read-only file system"),
    ("a huge file in the working directory", "open('big', 'wb').write(b'x' * (64 << 20))", "SIGXFSZ|File too large"),
    ("100 MB print", "print('x' * 100_000_000)", "displayed no image"),
    ("raising", "raise ValueError('boom')", r"ValueError \(line 1\): boom"),
    ("missing module", "import not_a_module_xyz", "ModuleNotFoundError"),
    ("displaying a non-image", "display(42)", "display\\(\\) takes a PIL image, got int"),
    ("displaying a huge image", "from PIL import Image\ndisplay(Image.new('L', (4200, 4200)))", "too large"),
    ("corrupting the channel", "import os\nfor fd in range(3, 12):\n    try:\n        os.write(fd, b'garbage' * 100)\n"
     "    except OSError:\n        pass", "broke the reply's format|displayed no image"),
    ("closing the channel", "import os\nos.closerange(3, 64)", "ended its episode's process"),
]


@pytest.mark.parametrize("name, code, expected", HOSTILE_CODE, ids=[c[0] for c in HOSTILE_CODE])
def test_hostile_code_ends_with_a_clear_error(world, name, code, expected):
    evil = ROOT / "evil_from_sandbox.txt"
    start = time.perf_counter()
    result = run_code(world, code.format(evil=str(evil)))
    elapsed = time.perf_counter() - start
    assert not result.ok and result.error, name
    assert __import__("re").search(expected, result.error), result.error
    assert elapsed < TIMEOUT + 5
    assert not evil.exists() and not Path("/tmp/x").exists()
    if name == "100 MB print":
        assert len(result.stdout) < 10_200 and "more characters cut" in result.stdout
    # the pool serves again right away
    ok = run_call(world, "crop", {"box": [0, 0, 9, 9]})
    assert ok.ok and ok.images[0].size == (10, 10)


def test_secrets_stay_out(world):
    result = run_code(world, """
        import os
        print(os.environ.get('VLRL_TEST_SECRET'))
        print(sorted(os.environ))
        try:
            print(open(os.path.expanduser('~root/.vlrl_test_secret')).read())
        except OSError as e:
            print('no file:', type(e).__name__)
        display(image_1)
    """)
    assert result.ok, result.error
    assert "s3cret" not in result.stdout and "None" in result.stdout and "no file" in result.stdout


def test_no_network(world):
    port = world["server"].getsockname()[1]
    result = run_code(world, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
    assert not result.ok and "Connection refused" in result.error
    with pytest.raises(socket.timeout):
        world["server"].accept()  # nothing reached the trainer's machine


def test_the_trainer_process_cannot_be_signalled(world):
    result = run_code(world, f"import os\nos.kill({os.getpid()}, 9)")
    assert not result.ok and "ProcessLookupError" in result.error


def test_tool_calls_that_misbehave(world):
    assert "returned int, not an image" in run_call(world, "returns_int", {"x": 3}).error
    assert "tool blew up on 4" in run_call(world, "explodes", {"x": 4}).error
    assert "too large" in run_call(world, "giant", {"side": 4200}).error
    assert "unknown tool 'rm_rf'" in run_call(world, "rm_rf", {}).error
    assert "expected int, got str" in run_call(world, "returns_int", {"x": "3"}).error


def test_sandboxed_result_equals_in_process(world):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    result = run_call(world, "focus_on_columns_with_mask", {"columns_to_focus_on": ["B"]}, [image],
                      {"columns_bbox": COLS})
    assert result.ok, result.error
    expected = focus.focus_on_columns_with_mask(image, ["B"], COLS)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected))
    code = run_code(world, "display(focus_on_columns_with_mask(image_1, ['B'], columns_bbox))", [image],
                    {"columns_bbox": COLS})
    assert code.ok and np.array_equal(np.asarray(code.images[0]), np.asarray(expected))


def test_class_tool_state_lives_per_episode(world):
    assert [run_call(world, "Tally", {}, episode="ep-a").text for _ in range(3)] == ["1", "2", "3"]
    assert run_call(world, "Tally", {}, episode="ep-b").text == "1"
    world["loop"].run_until_complete(world["pool"].end_episode("ep-a"))
    assert run_call(world, "Tally", {}, episode="ep-a").text == "1"


def test_actions_never_block_the_event_loop(world):
    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await world["pool"].code("slow", "import time\ntime.sleep(1)\ndisplay(image_1)",
                                          [Image.new("RGB", (8, 8))], {})
        task.cancel()
        return result, ticks

    result, ticks = world["loop"].run_until_complete(scenario())
    assert result.ok and ticks >= 50


def test_an_action_cannot_change_what_another_episodes_actions_see():
    """One worker serves both episodes. Episode A patches a tool's module, a builtin and a tool instance, and sees
    its own patches; episode B, before and after, sees none of them; so does A once it ends and starts again.
    Each episode's process is forked from the worker as it was when it loaded the tools."""
    poison = textwrap.dedent("""
        import builtins, vlrl.builtin.tools.focus as focus
        focus.focus_on_x_values_with_mask = lambda *a, **k: 'poisoned'
        builtins.sorted = lambda x: 'poisoned'
        focus_on_x_values_with_mask.target = None
        display(image_1)
    """)
    probe = textwrap.dedent("""
        import vlrl.builtin.tools.focus as focus
        assert sorted([2, 1]) == [1, 2], f"sorted is patched: {sorted([2, 1])}"
        assert focus.focus_on_x_values_with_mask != 'poisoned' and callable(focus.focus_on_x_values_with_mask)
        display(focus_on_x_values_with_mask(image_1, ['A'], x_values_bbox))
    """)

    async def scenario():
        async with SandboxPool(["chart_table_focus"], SandboxConfig(workers=1)) as pool:
            chart, meta = [Image.new("RGB", (120, 80), "white")], {"x_values_bbox": COLS}
            before = await pool.code("b", probe, chart, meta)
            poisoned = await pool.code("a", poison, chart, meta)
            seen_by_a = await pool.code("a", "display(image_1) if sorted([1]) == 'poisoned' else None", chart, meta)
            after = await pool.code("b", probe, chart, meta)
            fresh = await pool.code("c", probe, chart, meta)
            await pool.end_episode("a")
            a_again = await pool.code("a", probe, chart, meta)
            return before, poisoned, seen_by_a, after, fresh, a_again

    before, poisoned, seen_by_a, after, fresh, a_again = asyncio.new_event_loop().run_until_complete(scenario())
    assert poisoned.ok and seen_by_a.ok  # A's patches are A's
    for result in (before, after, fresh, a_again):
        assert result.ok, result.error
        assert np.array_equal(np.asarray(result.images[0]), np.asarray(before.images[0]))


def test_no_process_is_left_behind():
    """Every process of the pool's sandboxes (bubblewrap, its init, the worker) is gone after close."""

    def tree(pids):
        procs = set(pids)
        for pid in pids:
            try:
                procs |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
        return procs

    async def scenario():
        pool = SandboxPool(["drawing"], SandboxConfig(workers=2, timeout_s=2))
        await pool.start()
        seen = tree(pool.worker_pids())
        await pool.code("x", "while True:\n    pass", [Image.new("RGB", (8, 8))], {})  # replaced after timeout
        seen |= tree(pool.worker_pids())
        await pool.close()
        return seen

    seen = asyncio.new_event_loop().run_until_complete(scenario())
    assert len(seen) >= 9  # three sandboxes of three processes each
    time.sleep(0.2)
    alive = [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_missing_bubblewrap_is_said_loudly(monkeypatch):
    from vlrl.sandbox import pool as pool_module

    monkeypatch.setattr(pool_module.shutil, "which", lambda name: None)
    with pytest.raises(pool_module.SandboxUnavailable, match="bubblewrap .* is not installed"):
        SandboxPool(["drawing"])
    with pytest.warns(RuntimeWarning, match="SANDBOX DISABLED"):
        SandboxPool(["drawing"], SandboxConfig(allow_unsandboxed=True))


def test_a_pool_not_run_as_root_says_what_that_weakens(monkeypatch):
    from vlrl.sandbox import pool as pool_module

    monkeypatch.setattr(pool_module.os, "getuid", lambda: 1000)
    with pytest.warns(RuntimeWarning, match="not running as root, so the workers share your uid"):
        SandboxPool(["drawing"])


def test_a_cancelled_action_does_not_answer_the_next_one(world):
    """Cancelling a running action drops its worker, so its late reply cannot reach another request."""
    loop, pool = world["loop"], world["pool"]

    async def cancel_then_call():
        slow = asyncio.ensure_future(pool.code("cancelled", "import time\ntime.sleep(1.0)\ndisplay(image_1)",
                                               [Image.new("RGB", (30, 20), "red")], {}))
        await asyncio.sleep(0.3)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return await pool.call("cancelled", "crop", {"box": [0, 0, 4, 4]}, [Image.new("RGB", (50, 40), "blue")], {})

    before = pool.restarts
    result = loop.run_until_complete(cancel_then_call())
    assert result.ok and result.images[0].size == (5, 5)
    assert result.images[0].getpixel((0, 0)) == (0, 0, 255)
    assert pool.restarts == before + 1
    loop.run_until_complete(asyncio.sleep(1.2))  # the killed worker's reply would have come by now
    again = run_call(world, "crop", {"box": [0, 0, 2, 2]}, episode="cancelled")
    assert again.ok and again.images[0].size == (3, 3)
