"""Freed memory is kept and reused: a tensor allocated again after a free does not fault its pages in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# in a thread of its own (as the trainer's work runs), steps shaped like a CPU update's micro-batches: logits of
# 8,192 tokens x 2,048 (64 MiB), their log-softmax and its backward; the minor page faults of the steps after the first
PROBE = """
import json, resource, threading
from vlrl.allocator import keep_freed_memory
kept = keep_freed_memory()
import torch
faults = []
def work():
    weight = torch.randn(256, 2048, requires_grad=True)
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        (torch.randn(8192, 256) @ weight).log_softmax(-1).sum().backward()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps({"kept": kept, "repeat_faults": sum(faults[1:])}))
"""


def probe(malloc: str) -> dict:
    env = {**os.environ, "VLRL_MALLOC": malloc}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_a_freed_tensor_is_reused_instead_of_faulted_in_again():
    system, kept = probe("system"), probe("keep")
    assert system["kept"] is False and kept["kept"] is True  # this suite runs on glibc (Linux)
    # glibc's defaults unmap each 64 MiB block at its free and fault it in again at the next step
    assert system["repeat_faults"] > 11 * 16_384
    assert kept["repeat_faults"] < system["repeat_faults"] / 2
