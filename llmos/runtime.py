"""Wiring the layers together: a kernel whose processes get an in-process SDK handle.

`LocalTransport` carries a process's syscalls straight into the syscall table: the path for
code the kernel runs in its own interpreter, and for sessions (the shell, scripts) that boot
a kernel here. It sits above syscalls/ and the SDK, which itself imports only the ABI."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from pydantic import BaseModel

from llmos.agents.sdk import Emit, Sys
from llmos.config import KernelConfig
from llmos.kernel.kernel import Kernel
from llmos.kernel.model.backend import Backend
from llmos.kernel.proc.process import Process
from llmos.syscalls import dispatch


class LocalTransport:
    """Calls go straight into the kernel's syscall table, as process `pid`."""

    def __init__(self, kernel: Kernel, pid: int) -> None:
        self.kernel = kernel
        self.pid = pid

    async def call(self, name: str, args: dict[str, Any], emit: Emit | None = None) -> BaseModel:
        return await dispatch(self.kernel, self.pid, name, args, emit)


def local_handle(kernel: Kernel, proc: Process) -> Sys:
    return Sys(LocalTransport(kernel, proc.pid))


@asynccontextmanager
async def boot(config: KernelConfig | None = None, backend: Backend | None = None) -> AsyncIterator[Kernel]:
    """Start a kernel (loading the model unless `backend` is given); stop it on exit."""
    async with Kernel.boot(config, backend, local_handle) as kernel:
        yield kernel


def session(kernel: Kernel, name: str = "session") -> Sys:
    """A handle for code outside any process (the shell, a script): a session process."""
    return local_handle(kernel, kernel.session(name))
