"""`vlrl bench scale`: rollout throughput over 1 and 2 engine replicas, and what the Ray layer costs.

The workload is `vlrl bench train`'s (8 charts x 8 trajectories with the focus tools, up
to 2 turns of 32 new tokens, fp32), run four times by `vlrl train` on a local Ray cluster
started for each run:

- ``single``: one engine in this process (distributed.backend none);
- ``ray x1``: one replica in a Ray actor given every core of the machine;
- ``ray x2``: two replicas, each given half of the cores;
- ``ray x2 +rank``: the same, and a second data-parallel trainer rank (each update's
  forward and backward split over the driver and one actor).

The first step of each run warms caches up; the figures are means over the others. Step
time includes the update in the driver, so ``ray_overhead_ratio`` = step time of ``ray x1``
over ``single`` is the cost of the process hop and the router. On one machine the replicas
share its cores: two replicas can only beat one where a single engine leaves cores idle
(tool calls, Python overhead); on separate nodes each replica brings its own.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from vlrl.bench.train import measure


def setups(cores: int) -> dict[str, list[str]]:
    """Each run's overrides; the replicas split ``cores`` between them."""
    ray = ["distributed.backend=ray"]
    return {"single": [],
            "ray x1": [*ray, "engine.replicas=1", f"engine.replica_resources={{CPU: {cores}}}"],
            "ray x2": [*ray, "engine.replicas=2", f"engine.replica_resources={{CPU: {cores / 2}}}"],
            "ray x2 +rank": [*ray, "engine.replicas=2", f"engine.replica_resources={{CPU: {cores / 4}}}",
                             "distributed.world_size=2", f"distributed.rank_resources={{CPU: {cores / 2}}}"]}


QUICK = ["rollout.prompts_per_step=2", "rollout.group_size=4"]  # --quick: a smaller batch, for a smoke run


def run(model_dir: Path, engine: str, steps: int, quick: bool, as_json: bool) -> dict[str, float]:
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the first warms up), got {steps}")
    cores = os.cpu_count() or 1
    rows: dict[str, dict[str, Any]] = {}
    for name, overrides in setups(cores).items():
        records = measure(model_dir, engine, [*overrides, f"steps={steps}", *(QUICK if quick else [])])[1:]
        rows[name] = {key: statistics.mean(r[f"perf/{key}"] for r in records)
                      for key in ("step_s", "rollout_s", "update_s", "tokens_per_s")}
        rows[name]["requests"] = [sum(r.get(f"engine/replica_{i}_requests", 0) for r in records) for i in range(2)]
    print(f"scale-out ({engine} engine, {cores} cores, {steps - 1} measured steps after one warm-up; "
          f"{'2 prompts x 4' if quick else '8 prompts x 8'} trajectories per step)")
    print(f"  {'setup':13s} {'step s':>7s} {'rollout s':>10s} {'update s':>9s} {'tokens/s':>9s}  requests per replica")
    for name, row in rows.items():
        spread = " / ".join(str(n) for n in row["requests"] if n)
        print(f"  {name:13s} {row['step_s']:7.2f} {row['rollout_s']:10.2f} {row['update_s']:9.2f} "
              f"{row['tokens_per_s']:9.0f}  {spread}")
    figures = {"tokens_per_s_1": round(rows["ray x1"]["tokens_per_s"], 1),
               "tokens_per_s_2": round(rows["ray x2"]["tokens_per_s"], 1),
               "ray_overhead_ratio": round(rows["ray x1"]["step_s"] / rows["single"]["step_s"], 3)}
    print(f"  2 replicas vs 1: {figures['tokens_per_s_2'] / figures['tokens_per_s_1']:.2f}x tokens/s; "
          f"Ray layer: step time x{figures['ray_overhead_ratio']:.2f} of the single process; "
          f"2 trainer ranks: update x{rows['ray x2']['update_s'] / rows['ray x2 +rank']['update_s']:.2f} faster")
    if as_json:
        print(json.dumps(figures))
    return figures
