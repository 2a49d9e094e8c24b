"""Booting a kernel inside the `llmos` command: `run`, `demo` and `shell --local`.

The one module of shell/ that touches a kernel: it boots one (llmos.runtime) and gives the
client side the face of it that shell/local.py declares. cli.py imports it only for the
commands that boot a kernel, so `llmos shell` on the daemon loads neither the kernel nor torch.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator, Sized

import trio

from llmos.abi.log import LogEvent
from llmos.agents.sdk import Sys
from llmos.config import KernelConfig
from llmos.kernel.kernel import Kernel
from llmos.kernel.proc.capabilities import Capabilities
from llmos.kernel.state.events import Event
from llmos.runtime import boot, local_handle
from llmos.shell.local import Baseline, Boot, LocalKernel


class LogEvents:
    """The kernel's events as the ABI's LogEvents (what log.follow streams to a client). Not an
    async generator: a reader cancelled mid-wait (the demo's redraw timeout) reads on later."""

    def __init__(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        self.events = events

    def __aiter__(self) -> "LogEvents":
        return self

    async def __anext__(self) -> LogEvent:
        event = await self.events.__anext__()
        return LogEvent(pid=event.pid, kind=event.kind, text=event.text, time=event.time)


class BootedKernel:
    """A kernel in this process, as the client side may use it (a LocalKernel)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def session(self, name: str, fs_root: Path | None = None) -> Sys:
        caps = Capabilities(fs_root=fs_root.resolve()) if fs_root is not None else None
        return local_handle(self.kernel, self.kernel.session(name, caps))

    @contextmanager
    def watch(self) -> Iterator[AsyncIterator[LogEvent]]:
        with self.kernel.events.watch() as events:
            yield LogEvents(events)

    def describe(self) -> str:
        backend = self.kernel.backend
        loaded = "loaded" if getattr(backend, "loaded", True) else "loads on its first use"
        return f"model {backend.name} ({loaded})"

    def record_llm_calls(self) -> Sized:
        return self.kernel.record_llm_calls()

    async def replay_baseline(self, recorded: Sized) -> Baseline:
        from llmos.benchmarks.baseline import sequential_generate

        return await trio.to_thread.run_sync(sequential_generate, self.kernel.backend, recorded)


def booter(config: KernelConfig) -> Boot:
    """What cli.py hands the client: boot a kernel with `config` when the client asks."""

    @asynccontextmanager
    async def open_kernel() -> AsyncIterator[LocalKernel]:
        async with boot(config) as kernel:
            yield BootedKernel(kernel)

    return open_kernel
