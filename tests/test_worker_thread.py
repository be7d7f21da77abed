"""WorkerThread: a component's heavy calls run one at a time on one thread, off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from vlrl.worker_thread import WorkerThread


def test_calls_run_in_order_on_one_thread_off_the_loop():
    worker = WorkerThread("test-worker")
    seen: list[tuple[int, int]] = []

    def work(k: int) -> int:
        time.sleep(0.01 * (3 - k))  # later calls are shorter: only a single thread keeps them in order
        seen.append((k, threading.get_ident()))
        return k * k

    async def go() -> tuple[list[int], list[int]]:
        ticks: list[int] = []

        async def tick() -> None:  # the loop keeps running while the worker sleeps
            for n in range(3):
                ticks.append(n)
                await asyncio.sleep(0.005)

        results = await asyncio.gather(*(worker.run(work, k) for k in range(3)), tick())
        return results[:3], ticks

    results, ticks = asyncio.run(go())
    assert results == [0, 1, 4] and ticks == [0, 1, 2]
    assert [k for k, _ in seen] == [0, 1, 2]
    threads = {ident for _, ident in seen}
    assert len(threads) == 1 and threading.get_ident() not in threads
    worker.close()


def test_errors_reach_the_caller_and_a_closed_worker_starts_again():
    worker = WorkerThread("test-worker")

    def boom() -> None:
        raise ValueError("bad batch 3")

    with pytest.raises(ValueError, match="bad batch 3"):
        asyncio.run(worker.run(boom))
    worker.close()
    assert asyncio.run(worker.run(lambda x: x + 1, 1)) == 2
    worker.close()


def test_threads_here_sets_the_calling_threads_torch_threads_and_no_other():
    import torch

    from vlrl.worker_thread import threads_here

    # as a run's distributed.trainer_threads does: a new thread's first torch call applies it, which must not undo ours
    torch.set_num_threads(torch.get_num_threads())
    seen: dict[str, int | None] = {}

    def limited() -> None:
        seen["before"] = threads_here(1)
        seen["here"] = torch.get_num_threads()
        other = threading.Thread(target=lambda: seen.__setitem__("other", torch.get_num_threads()))
        other.start()
        other.join()
        threads_here(seen["before"])
        seen["restored"] = torch.get_num_threads()

    thread = threading.Thread(target=limited)
    thread.start()
    thread.join()
    everywhere = torch.get_num_threads()
    assert everywhere > 1  # this suite runs on 2+ cores, where torch runs ops on every core
    assert seen == {"before": everywhere, "here": 1, "other": everywhere, "restored": everywhere}
