"""The compute thread: the kernel's torch work (loading weights, forward passes, embeddings)
runs on one long-lived thread, and every other thread computes on one core.

Why one thread. Torch's CPU wheels parallelize with GNU OpenMP (libgomp): each thread that
runs a parallel op gets a team of worker threads of its own, kept for the thread's life. Once a
process has more OpenMP threads than CPUs, libgomp cuts its spin-wait to a few hundred spins
and the teams' threads sleep on futexes between parallel regions, of which a decode step has
hundreds. Measured on the 2-core machine we develop on, SmolLM2-135M, one sequence: 37-46 ms
a decode step when one thread computes, 71-78 ms once another thread had run a single parallel
matmul. Forward passes issued from whichever worker thread trio handed out, beside the
loader's, the embedder's and the kernel loop's teams, paid that on every step. It is also the
GPU's discipline: one stream of work, in order, never two computations fighting for the cores.

Whoever calls `call` (blocking) or `run` (from trio) gets the function run on the compute
thread, after what was queued before it; called on the compute thread itself, it runs at
once. The thread starts on first use. The thread that starts it, and any that configures it
(the kernel's loop does at boot: it seats KV caches), computes on one core; what else
computes goes through here.
"""

from __future__ import annotations

import functools
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

import torch
import trio

T = TypeVar("T")


class ComputeThread:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.cores = torch.get_num_threads()  # what torch would use by default: one per core

    @property
    def here(self) -> bool:
        """The caller is the compute thread."""
        return threading.current_thread() is self._thread

    def configure(self, threads: int) -> None:
        """Compute on `threads` cores (0: one per core)."""
        self._start()
        cores = threads if threads > 0 else self.cores
        if self.here:
            torch.set_num_threads(cores)
            return
        _one_core()
        self.call(torch.set_num_threads, cores)  # last: see _one_core

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the compute thread; blocks the calling thread until it is done."""
        if self.here:
            return fn(*args)
        return self._submit(fn, args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the compute thread, awaited from trio. Like trio.to_thread.run_sync, a
        started computation is not abandoned: cancellation waits for it, then is delivered."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake() -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # the loop that asked is gone
                pass

        future = self._submit(fn, args, wake)
        with trio.CancelScope(shield=True):
            await done.wait()
        await trio.lowlevel.checkpoint_if_cancelled()
        return future.result()

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], then: Callable[[], None] | None = None) -> Future[T]:
        """Queue fn(*args); its outcome goes into the future, then `then` runs (on the compute
        thread)."""
        self._start()
        future: Future[T] = Future()

        def job() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the caller gets it, the compute thread goes on
                future.set_exception(exc)
            if then is not None:
                then()

        self._jobs.put(job)
        return future

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            _one_core()
            ready = threading.Event()
            self._thread = threading.Thread(target=self._serve, args=(ready,), name="llmos-compute", daemon=True)
            self._thread.start()
            ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        torch.set_num_threads(self.cores)
        ready.set()
        while True:
            self._jobs.get()()


def _one_core() -> None:
    """The calling thread computes on one core. Torch keeps a process-wide thread count as well
    as each thread's: threads take it when they first compute, and the compute thread ran its
    decode steps 40% slower while it said 1 (measured), so the compute thread sets its own
    count after this, which leaves the process-wide one at its count too."""
    torch.get_num_threads()  # the thread's first computation would reset its count: do it now
    torch.set_num_threads(1)


compute = ComputeThread()


def on_compute_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function that computes: whoever calls it, it runs on the compute thread."""

    @functools.wraps(fn)
    def hop(*args: Any, **kwargs: Any) -> T:
        if compute.here:
            return fn(*args, **kwargs)
        return compute.call(functools.partial(fn, *args, **kwargs))

    return hop
