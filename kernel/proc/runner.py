"""How a process's program runs: the one thing the kernel leaves to the layer above.

The kernel owns a process's life — spawn, states, signals, exit, reaping by its parent — but
not the machinery that executes its program, which needs the syscall table (it carries the
program's calls to `dispatch`) and the SDK. A Runner is that machinery, handed to
`Kernel.boot` by llmos.runtime:

  WorkerRunner        each program in its own OS process, forked from a template, confined by
                      the OS, reaching the kernel only over its channel (the default)
  InProcessRunner     the program as a coroutine in the kernel's own event loop: for trusted
                      code only ("inprocess-trusted"); a busy loop there stops the kernel

`run` returns how the program ended; being cancelled (a kill, a wall-time deadline) it must
stop the program before it returns. `signal` is called by the kernel after it has changed the
process's state: the runner makes the program agree (SIGKILL, SIGSTOP, SIGCONT for a worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.proc.process import Process

Signal = Literal["kill", "stop", "cont"]


@dataclass(frozen=True)
class Exit:
    """How a program ended: its exit code, the reason (the traceback of an uncaught exception),
    and its result for the parent."""

    code: int
    reason: str
    result: Any = None


class Runner(Protocol):
    isolation: str  # "workers" | "inprocess-trusted"

    def describe(self) -> str:
        """One line for kernel.stat and the start-up banner: how programs are confined here."""
        ...

    async def serve(self, kernel: "Kernel", *, task_status: Any) -> None:
        """Started in the kernel's nursery at boot, cancelled at shutdown."""
        ...

    async def run(self, proc: "Process") -> Exit: ...

    def signal(self, proc: "Process", signal: Signal) -> None: ...
