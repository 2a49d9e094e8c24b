"""Wiring the layers together: a kernel, the syscall table, and how programs run.

`boot` starts a kernel with a runner (kernel/proc/runner.py) chosen by `KernelConfig.isolation`:
  "workers"             each agent program in its own OS process, confined by the OS and
                        reaching the kernel only over its channel (runtime/workers.py): the
                        default for `llmos run`, `shell`, `demo` and the daemon
  "inprocess-trusted"   programs as coroutines in the kernel's process (runtime/inprocess.py):
                        for trusted code and kernel tests only; a busy loop there stops the kernel
`session` gives code outside any process (the shell, a script, a test) a handle whose calls go
straight into the syscall table (`LocalTransport`). This layer sits above syscalls/ and the
SDK; the SDK itself imports only the ABI.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from pydantic import BaseModel

from llmos.agents.sdk import Emit, Sys
from llmos.config import ISOLATIONS, PRIVATE_UMASK, KernelConfig, secure_data_dir
from llmos.kernel.kernel import Kernel
from llmos.kernel.model.backend import Backend
from llmos.kernel.proc.process import Process
from llmos.kernel.proc.runner import Runner
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


def make_runner(config: KernelConfig) -> Runner:
    if config.isolation == "workers":
        from llmos.runtime.workers import WorkerRunner

        return WorkerRunner()
    if config.isolation == "inprocess-trusted":
        from llmos.runtime.inprocess import InProcessRunner

        return InProcessRunner()
    raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {config.isolation!r}")


@asynccontextmanager
async def boot(config: KernelConfig | None = None, backend: Backend | None = None) -> AsyncIterator[Kernel]:
    """Start a kernel (loading the model unless `backend` is given); stop it on exit. What it
    writes under the data directory is private to its user (umask 077 while it runs)."""
    config = config or KernelConfig()
    runner = make_runner(config)
    if config.prestart_workers and hasattr(runner, "prestart"):
        runner.prestart()  # its imports overlap the model's loading
    secure_data_dir()
    old_umask = os.umask(PRIVATE_UMASK)
    try:
        async with Kernel.boot(config, backend, runner) as kernel:
            kernel.user_umask = old_umask  # what fs.write gives the files it creates for agents
            yield kernel
    finally:
        os.umask(old_umask)


def session(kernel: Kernel, name: str = "session") -> Sys:
    """A handle for code outside any process (the shell, a script): a session process."""
    return local_handle(kernel, kernel.session(name))
