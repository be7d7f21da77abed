"""`vlrl bench memory`: the trainer's and the HF engine's memory at the lengths users train.

For a model folder (default: the tiny model of the ``qwen2.5-vl-7b`` shape, its real
151,936-row vocabulary), a trajectory of N tokens holding 4 images (a question with a chart,
then three tool results with an image each, policy text between them) is measured at
N = 2k, 4k, 8k and 16k: (a) the peak resident memory of one trainer step (forward,
backward and AdamW through ``PolicyTrainer``, the GRPO loss) and its tokens per second;
(b) the peak of the logprob-only forward. Each measurement runs in a process of its own,
so a peak is that measurement's; one that runs out of memory is reported as such (the
process is held to ``LIMIT`` of the machine's memory, so it fails with an error instead of
calling the kernel's OOM killer). (c) The HF engine's KV cache per 1,000 tokens: the bytes
of the keys and values a forward of 1,024 tokens leaves, the layout the engine keeps.
With ``device="cuda"`` the model and the step run on the GPU and (a) and (b) are the peak of
GPU memory allocated by PyTorch (the process's own resident memory is not limited then).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import resource
import time
from pathlib import Path
from typing import Any

import psutil

from vlrl.lifeline import die_with

LENGTHS = (2048, 4096, 8192, 16384)
IMAGES, IMAGE_SIZE = 4, (448, 448)  # 256 visual tokens each (28 x 28 pixels per token)
LIMIT = 0.9  # of the machine's memory a measurement may hold
GB = 2**30


def trajectory(tokenizer: Any, vision: Any, length: int, seed: int = 0) -> Any:
    """A trajectory of exactly ``length`` ids: a chart question, then policy text and 3 tool results with an
    image each, the policy text filling the rest in equal parts."""
    from vlrl.demo import bar_chart, question_prompt, tool_observation
    from vlrl.types import Segment, Trajectory

    rng = random.Random(seed)
    charts = [bar_chart([rng.uniform(1, 9) for _ in range(5)], size=IMAGE_SIZE) for _ in range(IMAGES)]
    prompt = question_prompt(tokenizer, vision, "Which bar is the highest?", charts[0])
    observations = [tool_observation(tokenizer, vision, "Execution success.", im) for im in charts[1:]]
    text = length - len(prompt) - sum(len(o) for o in observations)
    if text < IMAGES:
        raise ValueError(f"a {length}-token trajectory cannot hold {IMAGES} images of {IMAGE_SIZE} pixels")
    words = range(300, 2000)  # ids of the trained byte-level vocabulary, none special
    traj = Trajectory("memory", "bench", [Segment("prompt", tuple(prompt), images=(charts[0],))])
    for turn in range(IMAGES):
        n = text // IMAGES + (text % IMAGES if turn == IMAGES - 1 else 0)
        traj.segments.append(Segment("policy", tuple(rng.choice(words) for _ in range(n)),
                                     logprobs=tuple(-1.0 for _ in range(n)), versions=tuple(0 for _ in range(n))))
        if turn < len(observations):
            traj.add_observation(tuple(observations[turn]), (charts[turn + 1],))
    assert len(traj.token_ids) == length
    return traj


def _measure(model_dir: str, mode: str, length: int, device: str, queue: Any, parent: int) -> None:
    """One measurement in this (fresh) process; puts its figures on ``queue``."""
    die_with(parent)
    limit = int(psutil.virtual_memory().total * LIMIT)
    if device == "cpu":  # CUDA maps far more address space than it uses: a limit on it would stop the driver
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        from vlrl.algos.losses import ClippedSurrogate
        from vlrl.config import LossConfig, OptimConfig
        from vlrl.trainer.batches import TrainItem
        from vlrl.trainer.logprobs import sequence_logprobs
        from vlrl.trainer.policy import PolicyTrainer
        from vlrl.vision import VisionInputs

        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).to(device)
        tokenizer, vision = AutoTokenizer.from_pretrained(model_dir), VisionInputs(model_dir)
        traj = trajectory(tokenizer, vision, length)
        gpu = device != "cpu"
        loaded = (torch.cuda.memory_allocated() if gpu else psutil.Process().memory_info().rss) / GB
        start = time.perf_counter()
        if mode == "train":
            trainer = PolicyTrainer(model, vision, OptimConfig(micro_batch_tokens=length), ClippedSurrogate(LossConfig()),
                                    total_steps=1)
            trainer.step([TrainItem(traj, 1.0)])
        else:
            with torch.no_grad():
                sequence_logprobs(model.eval(), vision, [(traj.token_ids, traj.images)])
        if gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() if gpu  # Linux's ru_maxrss is in KiB
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / GB
        queue.put({"peak_gb": round(peak, 2), "loaded_gb": round(loaded, 2), "seconds": round(seconds, 2),
                   "tokens_per_s": round(length / seconds, 1)})
    except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeError (CUDA: OutOfMemoryError)
        where = f"the {limit / GB:.1f} GB limit" if device == "cpu" else device
        queue.put({"error": f"out of memory on {where}: {str(e).splitlines()[0][:160]}"})


def measure(model_dir: Path, mode: str, length: int, device: str = "cpu") -> dict[str, Any]:
    """``_measure`` in a spawned process; a process that dies says how."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(str(model_dir), mode, length, device, queue, os.getpid()))
    proc.start()
    proc.join()
    if not queue.empty():
        return queue.get()
    return {"error": f"the measuring process died (exit code {proc.exitcode})"}


def kv_bytes_per_1k(model_dir: Path) -> float:
    """GB of keys and values per 1,000 tokens in the model's dtype, read off a 1,024-token forward's cache."""
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.randint(300, 2000, (1, 1024)), use_cache=True)
    total = sum(t.numel() * t.element_size() for layer in out.past_key_values for t in layer[:2])
    return total / 1024 * 1000 / GB


def run(model_dir: Path, shape: str | None, lengths: tuple[int, ...], as_json: bool,
        device: str = "cpu") -> dict[str, Any]:
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).text_config.vocab_size
    what = "resident memory" if device == "cpu" else f"{device} memory allocated"
    print(f"peak {what} at {shape or model_dir} (vocabulary {vocab:,}), a trajectory of N tokens with {IMAGES} "
          f"images of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} px, float32, one process per figure")
    rows: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "logprobs": {}}
    for length in lengths:
        for mode in rows:
            rows[mode][length] = measure(model_dir, mode, length, device)
    kv = kv_bytes_per_1k(model_dir)
    print(f"  {'N':>6s}  {'train step peak':>16s}  {'tokens/s':>8s}  {'logprob forward peak':>20s}")
    for length in lengths:
        train, logp = rows["train"][length], rows["logprobs"][length]
        cell = (lambda r: f"{r['peak_gb']:.2f} GB" if "peak_gb" in r else "failed")
        print(f"  {length:6d}  {cell(train):>16s}  {train.get('tokens_per_s', float('nan')):8.1f}  "
              f"{cell(logp):>20s}")
    for mode, by_length in rows.items():
        for length, r in by_length.items():
            if "error" in r:
                print(f"  {mode} at {length}: {r['error']}")
    loaded = [r["loaded_gb"] for r in rows["train"].values() if "loaded_gb" in r]
    if loaded:
        print(f"  (the model loaded, before any step: {min(loaded):.2f} GB)")
    print(f"  HF engine KV cache: {kv * 1000:.2f} MB per 1k tokens")
    figures = {"shape": shape, "vocab": vocab, "device": device,
               "trainer_peak_gb": {str(n): r.get("peak_gb") for n, r in rows["train"].items()},
               "logprob_peak_gb": {str(n): r.get("peak_gb") for n, r in rows["logprobs"].items()},
               "kv_gb_per_1k_tokens": round(kv, 9),
               "trainer_tokens_per_s": {str(n): r.get("tokens_per_s") for n, r in rows["train"].items()}}
    if as_json:
        print(json.dumps(figures))
    return figures
