"""Running programs in the kernel's own process: `--isolation inprocess-trusted`.

The program is a coroutine in the kernel's event loop with an in-process `Sys` handle: the
cheapest way to run code, and no isolation at all. It shares the kernel's memory, files and
CPU: a busy loop freezes the kernel, `open()` reaches anything the kernel can, and `sys`'s
transport can be pointed at another pid. For trusted code (and tests of kernel internals)
only; the default is a worker per process (runtime/workers.py).
"""

from __future__ import annotations

import traceback
from typing import Any

import trio

from llmos.abi.proc import EXIT_ERROR, ProcessExit
from llmos.abi.program import ProgramError
from llmos.agents import program
from llmos.kernel.kernel import Kernel
from llmos.kernel.proc.process import Process
from llmos.kernel.proc.runner import Exit, Signal


class InProcessRunner:
    isolation = "inprocess-trusted"

    def __init__(self) -> None:
        self.kernel: Kernel | None = None

    def describe(self) -> str:
        return "inprocess-trusted: agent programs run unconfined inside the kernel's process (trusted code only)"

    async def serve(self, kernel: Kernel, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.kernel = kernel
        task_status.started()

    async def run(self, proc: Process) -> Exit:
        from llmos.runtime import local_handle

        assert self.kernel is not None
        try:
            entry = program.load(proc.program)
        except ProgramError as exc:
            return Exit(EXIT_ERROR, f"cannot load the program: {exc}")
        try:
            result = await entry(local_handle(self.kernel, proc), proc.args)
        except ProcessExit as exc:
            return Exit(exc.code, "exited", exc.result)
        except trio.Cancelled:
            raise
        except SystemExit as exc:
            return Exit(exc.code if isinstance(exc.code, int) else 0 if exc.code is None else EXIT_ERROR, "exited")
        except BaseException as exc:  # the agent's bug, never the kernel's
            return Exit(EXIT_ERROR, "".join(traceback.format_exception(exc)).rstrip())
        return Exit(0, "exited", result)

    def signal(self, proc: Process, signal: Signal) -> None:
        pass  # the kernel's hold is the stop; a kill cancels the task
