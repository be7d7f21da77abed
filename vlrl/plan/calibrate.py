"""`vlrl plan calibrate`: this machine's costs, measured on the parts a run uses.

  decode   -- the HF engine decoding N requests together (N = 1, 8, 32, 64), end-of-sequence
              suppressed, to 16, 80 and 400 tokens: differences are decode steps alone (the
              prefill drops out); the later steps cost more by the longer context they
              attend to (per context token: its batch is left-padded, so every request
              attends to the longest one's, ``padded_batch``), and a line through (N,
              seconds per step) gives base + per request;
  prefill  -- the engine's prefill of fresh prompts of 256, 512 and 1,024 tokens (the median of
              3 each): seconds per token; and of a question with a chart never seen before
              against text of its length, right after it (the median of 7 differences):
              seconds per image (the processor, the vision encoder);
  cache    -- the engine's own count, over the decode runs, of the seconds it spent rebuilding its
              batch's cache as requests joined and left, per position of the rebuilt caches;
  tool     -- the sandboxed focus tool (`vlrl bench tools`' measurement): its median latency;
  update   -- short `vlrl train` runs (GRPO, the HF engine) at answer caps of 16, 64, 128 and 256
              tokens (trajectories of about 200 to 950): each step's perf/update_s after the
              first against the positions it trained (``lengths.jsonl``, cut and padded into
              micro-batches as the trainer does), a line through them; the weight sync is
              perf/sync_s;
  rollout  -- the same runs' perf/rollout_s over what the twin, with the costs above, predicts for
              their configs and lengths: the factor by which a real rollout (the event loop's work
              per delta, the GIL it shares with the engine's thread, a Ray replica's calls) is
              slower than its engine;
  contention -- one more run at a cap of 64 under the disaggregated mode (overlap, the engine
              decoding through the update): its perf/update_s over the update line's prediction
              for the tokens it trained, what an update pays for the engine beside it;
each twice: with every core for everything (``colocated``), and as `vlrl bench overlap`'s split
schedules place them (``disaggregated``: the engine in a one-core Ray replica, the trainer on
one torch thread; the engine's own steps measured on one thread of this process).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from vlrl.bench.overlap import SPLIT
from vlrl.bench.tools import measure as tool_latency
from vlrl.config import EngineConfig, ModelConfig, TrainConfig, load_config
from vlrl.demo import bar_chart, question_prompt
from vlrl.engines import make_engine
from vlrl.plan.costs import Costs, update_positions
from vlrl.recipes.train import train
from vlrl.runlog import read_log
from vlrl.types import SamplingParams
from vlrl.vision import VisionInputs

BATCHES, LENGTHS, FILLS, CAPS, REPEATS = (1, 8, 32, 64), (16, 80, 400), (256, 512, 1024), (16, 64, 128, 256), 3
ENGINE_COUNTERS = ("decode_s", "decode_steps", "decode_rows", "decode_positions", "prefill_s", "prefill_positions",
                   "prefill_images", "cache_s", "cache_positions")  # what ``engine_fit`` reads (the HF engine's STATS)
IMAGE_PAIRS = 7  # a small chart costs a few ms: the median of paired differences, not of separate medians
TRAIN = [
    "env.tools=[vlrl.builtin.tools.focus:focus_on_x_values_with_draw]", "env.max_turns=2", "env.invalid_action=end",
    "task.name=synthetic_charts", "task.args={kinds: [v_bar], families: [largest], difficulty: starter}",
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.temperature=1.0", "optim.lr=1.0e-6",
    "steps=4", "log.progress=false", "log.transcripts_every=0", "log.plots_every=0", "checkpoint_every=0",
]
DECODING_BESIDE = ["rollout.schedule=overlap", "rollout.extra_groups=4", "rollout.decode_during_update=true"]
CONTENTION_CAP = 64


def fit(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Least-squares coefficients of ``ys`` over the columns of ``rows``, every one >= 0 (a cost never shrinks with
    more work): the best fit among those of every subset of the columns, the others held at 0."""
    x, y = np.asarray(rows, dtype=float), np.asarray(ys, dtype=float)
    best, best_residual = np.zeros(x.shape[1]), float(np.sum(y * y))
    for size in range(1, x.shape[1] + 1):
        for columns in combinations(range(x.shape[1]), size):
            coef = np.linalg.lstsq(x[:, columns], y, rcond=None)[0]
            residual = float(np.sum((x[:, columns] @ coef - y) ** 2))
            if (coef >= 0).all() and residual < best_residual - 1e-15:
                best, best_residual = np.zeros(x.shape[1]), residual
                best[list(columns)] = coef
    return [float(c) for c in best]


def line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope, both >= 0."""
    base, slope = fit([[1.0, x] for x in xs], ys)
    return base, slope


async def engine_costs(model_dir: Path) -> dict[str, float]:
    """The HF engine's ``Costs`` on this process's threads: decode (base, per request, per context token), prefill
    (per token, per image), and its batch's cache rebuilds (per position, the engine's own count)."""
    engine = await make_engine(ModelConfig(str(model_dir)), EngineConfig(kind="hf", max_num_seqs=max(BATCHES)))
    try:
        tokenizer, vision = AutoTokenizer.from_pretrained(model_dir), VisionInputs(model_dir)
        chart = bar_chart([3.0, 7.0, 5.0])
        prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", chart)

        async def batch(n: int, tokens: int, tag: str) -> float:
            sampling = SamplingParams(max_tokens=tokens, temperature=1.0, suppress_token_ids=engine.eos_ids)
            began = time.perf_counter()
            await asyncio.gather(*(engine.complete(prompt, [chart], sampling, f"{tag}-{k}") for k in range(n)))
            return time.perf_counter() - began

        await batch(2, LENGTHS[0], "warm")
        engine.take_stats()
        short, mid, long = LENGTHS
        early, late = [], []  # seconds per step over the first window of answer tokens, and over the second
        for n in BATCHES:
            seconds = [await batch(n, t, f"{t}-{n}") for t in LENGTHS]
            early.append((seconds[1] - seconds[0]) / (mid - short))
            late.append((seconds[2] - seconds[1]) / (long - mid))
        # the two windows differ by their mean context: n requests x ((mid + long) - (short + mid)) / 2 tokens more
        more = [n * (long - short) / 2 for n in BATCHES]
        per_context = max(sum((b - a) * m for a, b, m in zip(early, late, more)) / sum(m * m for m in more), 0.0)
        at_early = [s - per_context * n * (len(prompt) + (short + mid) / 2) for s, n in zip(early, BATCHES)]
        base, per_request = line([float(n) for n in BATCHES], at_early)
        rebuilt = engine.take_stats()
        async def prefill(key: str, ids: list[int], images: list) -> float:
            began = time.perf_counter()
            await engine.prefill(key, ids, images)
            return time.perf_counter() - began

        def fresh(size: int, repeat: int) -> list[int]:  # text ids no prefill computed before
            return [40 + (k * (repeat + 1)) % 500 for k in range(size)]

        fills = [statistics.median([await prefill(f"fill-{size}-{r}", fresh(size, r), []) for r in range(REPEATS)])
                 for size in FILLS]
        extra = []
        for r in range(IMAGE_PAIRS):  # a chart never seen before, then the same prompt with text in its place
            image = bar_chart([3.0 + r, 7.0, 5.0 - r / 2])
            ids = question_prompt(tokenizer, vision, "Which bar is the highest?", image)
            start, end = ids.index(vision.vision_start_id), ids.index(vision.vision_end_id) + 1
            with_image = await prefill(f"image-{r}", ids, [image])
            # the same cached prefix before the image and the same tokens after it: only the image differs
            text = [*ids[:start], *fresh(end - start, 9 + r), *ids[end:]]
            extra.append(with_image - await prefill(f"text-{r}", text, []))
        return {"decode_base_s": base, "decode_per_request_s": per_request, "decode_per_context_token_s": per_context,
                "prefill_per_token_s": line([float(n) for n in FILLS], fills)[1],
                "prefill_per_image_s": max(statistics.median(extra), 0.0),
                "cache_per_position_s": rebuilt["cache_s"] / max(rebuilt["cache_positions"], 1)}
    finally:
        await engine.close()


def train_run(model_dir: Path, overrides: list[str], root: Path, cap: int, name: str) -> Path:
    """A short `vlrl train` run (``TRAIN``) at answer cap ``cap``, in ``root``."""
    return asyncio.run(train(load_config(TrainConfig, None, [
        *TRAIN, *overrides, f"model.path={model_dir}", f"log.dir={root}", f"rollout.max_new_tokens={cap}",
        f"name={name}"])))


def records(run: Path, name: str) -> list[dict]:
    """A run's ``name``.jsonl after its first step (the warm-up)."""
    return read_log(run, name)[1:]


def update_positions_of(run: Path) -> list[float]:
    """Positions each step after the first trained (prompt, observations and answers, padded as the trainer pads its
    micro-batches: ``update_positions``)."""
    budget = load_config(TrainConfig, run / "config.yaml").optim.micro_batch_tokens
    return [float(update_positions([p + sum(turns) + o for p, turns, o in shapes["trajectories"]], budget,
                                   padded=True)) for shapes in records(run, "lengths")]


def update_costs(runs: list[Path], contention: float = 1.0) -> tuple[float, float, float]:
    """(update base s, s per trained position, weight sync s) of ``runs``; the updates of a run whose engine decoded
    beside them (``decode_during_update``) taken as ``contention`` times their cost alone."""
    positions, seconds, syncs = [], [], []
    for run in runs:
        steps = records(run, "metrics")
        beside = load_config(TrainConfig, run / "config.yaml").rollout.decode_during_update
        positions += update_positions_of(run)
        seconds += [r["perf/update_s"] / (contention if beside else 1.0) for r in steps]
        syncs += [r["perf/sync_s"] for r in steps]
    base, per_position = line(positions, seconds)
    return base, per_position, statistics.median(syncs)


def update_contention(run: Path, costs: Costs) -> float:
    """A run's measured update seconds (the engine decoding beside them) over ``costs``' for its positions alone."""
    measured = sum(r["perf/update_s"] for r in records(run, "metrics"))
    return measured / sum(costs.update_s(int(n)) for n in update_positions_of(run))


def rollout_factor(runs: list[Path], costs: Costs, tokenizer: Any, eos: int) -> float:
    """The runs' measured rollout seconds over the twin's prediction for them (their configs and lengths); 1 when
    the twin predicts no rollout wait at all (a disaggregated run whose engine decoded wholly beside the updates)."""
    from vlrl.plan.report import plan_of, predict
    from vlrl.plan.workloads import from_run

    measured = predicted = 0.0
    for run in runs:
        steps = records(run, "metrics")
        plan, _ = plan_of(load_config(TrainConfig, run / "config.yaml"))
        measured += statistics.mean(r["perf/rollout_s"] + r["perf/reward_s"] for r in steps)
        predicted += predict(plan, costs, from_run(run), len(steps), tokenizer, eos)["rollout_s"]
    return measured / predicted if predicted > 0 else 1.0


def engine_fit(steps: list[dict]) -> dict[str, float]:
    """The engine's ``Costs`` fitted to the counters it logged (``engine/*`` of metrics.jsonl records), step by step:
    decode seconds over its steps, rows and attended positions; prefill over its positions and images; the batch's
    cache over the positions rebuilt (``fit``: none below zero)."""
    missing = sorted({name for name in ENGINE_COUNTERS for r in steps if f"engine/{name}" not in r})
    if not steps or missing:
        raise ValueError(f"no steps with the engine's counters to fit to (missing {missing or 'every step'}; runs of "
                         f"the HF engine log them)")

    def counted(columns: tuple[str, ...], seconds: str) -> list[float]:
        return fit([[r[f"engine/{c}"] for c in columns] for r in steps], [r[f"engine/{seconds}"] for r in steps])

    base, per_request, per_context = counted(("decode_steps", "decode_rows", "decode_positions"), "decode_s")
    per_token, per_image = counted(("prefill_positions", "prefill_images"), "prefill_s")
    [per_position] = counted(("cache_positions",), "cache_s")
    return {"decode_base_s": base, "decode_per_request_s": per_request, "decode_per_context_token_s": per_context,
            "prefill_per_token_s": per_token, "prefill_per_image_s": per_image, "cache_per_position_s": per_position}


def fitted(runs: list[Path], base: Costs, tokenizer: Any, eos: int) -> Costs:
    """``base`` with what ``runs`` (of one placement) measured themselves: the engine's costs fitted to its counters
    (``engine_fit``), the update's line to their updates and positions, their weight push, then the rollout factor
    over those. The tool's latency and the update's contention stay ``base``'s (a run's logs do not separate them).
    Where the machine's speed drifts, costs fitted to the runs themselves leave out the drift that a calibration done
    at another time brings in."""
    steps = [r for run in runs for r in records(run, "metrics")]
    try:
        engine = engine_fit(steps)
    except ValueError as e:
        raise ValueError(f"{[str(run) for run in runs]}: {e}") from None
    update_base, update_per_position, sync = update_costs(runs, base.update_contention)
    costs = replace(base, **engine, update_base_s=update_base, update_per_token_s=update_per_position, sync_s=sync,
                    rollout_factor=1.0, source=f"{base.source}; fitted to {len(steps)} steps of {len(runs)} run(s)")
    return replace(costs, rollout_factor=rollout_factor(runs, costs, tokenizer, eos))


def calibrate(model_dir: Path) -> dict[str, Costs]:
    """This machine's costs for both placements (see the module docstring)."""
    tool_s = asyncio.run(tool_latency(40, 2))["p50_ms"] / 1000
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = {}
    threads = torch.get_num_threads()
    stamp = time.strftime("%Y-%m-%d")
    for placement, n, overrides in (("colocated", threads, [f"distributed.trainer_threads={threads}"]),
                                    ("disaggregated", 1, SPLIT)):
        torch.set_num_threads(n)
        try:
            engine = asyncio.run(engine_costs(model_dir))
            with tempfile.TemporaryDirectory() as tmp:
                runs = [train_run(model_dir, overrides, Path(tmp), cap, f"calibrate-{cap}") for cap in CAPS]
                update_base, per_position, sync = update_costs(runs)
                costs = Costs(**engine, tool_s=tool_s, update_base_s=update_base, update_per_token_s=per_position,
                              sync_s=sync, padded_batch=True, padded_update=True,
                              source=f"vlrl plan calibrate, {stamp}, {n} torch thread(s) of {threads}")
                beside = train_run(model_dir, [*overrides, *DECODING_BESIDE], Path(tmp), CONTENTION_CAP,
                                   "calibrate-beside")
                out[placement] = replace(costs, rollout_factor=rollout_factor(runs, costs, tokenizer, eos),
                                         update_contention=update_contention(beside, costs))
        finally:
            torch.set_num_threads(threads)
    return out
