"""Wiring the layers together: a kernel whose processes get an in-process SDK handle."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from llmos.agents.sdk import LocalTransport, Sys
from llmos.config import KernelConfig
from llmos.kernel.model.backend import Backend
from llmos.kernel.kernel import Kernel
from llmos.kernel.proc.process import Process


def local_handle(kernel: Kernel, proc: Process) -> Sys:
    return Sys(LocalTransport(kernel, proc.pid))


@asynccontextmanager
async def boot(config: KernelConfig | None = None, backend: Backend | None = None) -> AsyncIterator[Kernel]:
    """Start a kernel (loading the model unless `backend` is given); stop it on exit."""
    import llmos.syscalls  # noqa: F401  (fills the syscall table)

    async with Kernel.boot(config, backend, local_handle) as kernel:
        yield kernel


def session(kernel: Kernel, name: str = "session") -> Sys:
    """A handle for code outside any process (the shell, a script): a session process."""
    return local_handle(kernel, kernel.session(name))
