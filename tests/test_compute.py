"""The compute thread (kernel/model/compute.py): forward passes, weight loading and embeddings
run on one thread, whoever asks; other threads compute on one core."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import trio
from conftest import kernel_with

from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.model.backend import WorkItem
from llmos.kernel.model.compute import compute
from llmos.runtime import session


def test_call_and_run_hop_to_one_thread_and_carry_errors():
    compute.configure(0)
    worker = compute.call(threading.current_thread)
    assert worker is not threading.current_thread() and worker.name == "llmos-compute"
    assert compute.call(torch.get_num_threads) == compute.cores and torch.get_num_threads() == 1

    def boom() -> None:
        raise ValueError("from the compute thread")

    async def main():
        assert await compute.run(threading.current_thread) is worker
        with pytest.raises(ValueError, match="from the compute thread"):
            await compute.run(boom)
        # a computation already started is waited for, then the cancellation is delivered
        finished = threading.Event()

        def slow() -> None:
            time.sleep(0.2)
            finished.set()

        with trio.move_on_after(0.01) as scope:
            await compute.run(slow)
        assert scope.cancelled_caught and finished.is_set()

    trio.run(main)
    assert compute.call(lambda: compute.call(lambda: 42)) == 42  # on the compute thread: runs at once


def test_forward_passes_and_embeddings_run_on_the_compute_thread(tiny_backend):
    embedder = Embedder()
    seen: set[str] = set()
    runner = tiny_backend.runner
    forward = runner.forward

    def spy(*args, **kwargs):
        seen.add(threading.current_thread().name)
        return forward(*args, **kwargs)

    runner.forward = spy
    try:

        async def main():
            async with kernel_with(tiny_backend) as kernel:
                await session(kernel, "t").llm.chat("hello", max_tokens=4)
                assert torch.get_num_threads() == 1  # the kernel loop's thread

        trio.run(main)
        tiny_backend.step([WorkItem(tiny_backend.new_kv(), [1, 2], True)])  # called from here, computed there
    finally:
        runner.forward = forward
    assert seen == {"llmos-compute"}
    model = embedder._load()
    encode = model.encode
    where: list[str] = []
    model.encode = lambda *a, **k: (where.append(threading.current_thread().name), encode(*a, **k))[1]
    try:
        assert len(embedder.embed(["a page"])[0]) == 384
    finally:
        model.encode = encode
    assert where == ["llmos-compute"]
