"""`vlrl bench tools`: latency of a sandboxed focus-tool call, pool throughput, and in-process cost.

The call is ``focus_on_x_values_with_mask`` on an 800x600 bar chart of eight bars: the
image crosses into the sandbox and the edited image comes back. Latency is one episode's
calls; a new episode's first call also forks its process (``first_call_p50_ms``: each of
up to 50 episodes makes one call and ends). Throughput runs as many concurrent episodes as
four times the pool's workers.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

from vlrl.config import SandboxConfig
from vlrl.demo import bar_chart
from vlrl.sandbox.pool import SandboxPool
from vlrl.tool import load_tools

SIZE, BARS = (800, 600), 8


def chart_and_boxes():
    values = [3.0, 7.0, 5.0, 2.0, 6.0, 4.0, 8.0, 1.0]
    slot = SIZE[0] / BARS
    boxes = [{"label": f"bar {i}", "x1": i * slot, "y1": 0, "x2": (i + 1) * slot - 1, "y2": SIZE[1] - 1}
             for i in range(BARS)]
    return bar_chart(values, size=SIZE), boxes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def measure(calls: int, workers: int) -> dict[str, float]:
    chart, boxes = chart_and_boxes()
    args = {"x_values_to_focus_on": ["bar 6"]}
    meta = {"x_values_bbox": boxes}
    async with SandboxPool(["chart_table_focus"], SandboxConfig(workers=workers)) as pool:
        for _ in range(5):  # warm-up
            await pool.call("warm", "focus_on_x_values_with_mask", args, [chart], meta)
        latencies = []
        for _ in range(calls):
            t = time.perf_counter()
            result = await pool.call("latency", "focus_on_x_values_with_mask", args, [chart], meta)
            latencies.append(time.perf_counter() - t)
            assert result.ok, result.error
        firsts = []
        for e in range(min(calls, 50)):
            t = time.perf_counter()
            await pool.call(f"first-{e}", "focus_on_x_values_with_mask", args, [chart], meta)
            firsts.append(time.perf_counter() - t)
            await pool.end_episode(f"first-{e}")

        async def episode(e: int) -> None:
            for _ in range(calls // (4 * workers) + 1):
                await pool.call(f"ep-{e}", "focus_on_x_values_with_mask", args, [chart], meta)

        t = time.perf_counter()
        await asyncio.gather(*(episode(e) for e in range(4 * workers)))
        total = 4 * workers * (calls // (4 * workers) + 1)
        throughput = total / (time.perf_counter() - t)
    tool = load_tools(["chart_table_focus"])["focus_on_x_values_with_mask"]
    local = []
    for _ in range(calls):
        t = time.perf_counter()
        tool(chart, ["bar 6"], boxes)
        local.append(time.perf_counter() - t)
    return {"p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * percentile(latencies, 0.95),
            "first_call_p50_ms": 1000 * statistics.median(firsts), "calls_per_s": throughput, "inprocess_p50_ms": 1000 * statistics.median(local)}


def run(calls: int, workers: int, as_json: bool) -> dict[str, float]:
    figures = asyncio.run(measure(calls, workers))
    print(f"sandboxed focus tool on an {SIZE[0]}x{SIZE[1]} chart ({calls} calls, {workers} workers)")
    print(f"  latency p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms; an episode's first call "
          f"(its process forked) p50 {figures['first_call_p50_ms']:.1f} ms")
    print(f"  throughput {figures['calls_per_s']:.0f} calls/s with the full pool")
    print(f"  in-process p50 {figures['inprocess_p50_ms']:.2f} ms")
    if as_json:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
    return figures
