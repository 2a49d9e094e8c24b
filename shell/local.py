"""What the shell's client side asks of a kernel booted inside the command, and nothing more.

`llmos run`, `llmos demo` and `llmos shell --local` run a kernel in their own process; the
rest of the time the same code talks to the daemon. Either way the client modules (shell.py,
run.py, demo.py) hold no kernel object: they get the SDK's `Sys` handles, the kernel's events
as the ABI's `LogEvent`s, and a line saying which kernel it is. shell/boot.py is the one module
of shell/ that boots a kernel and implements this protocol; cli.py hands its `Boot` to the
client, which never imports it (an import-linter contract in pyproject.toml says so).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol, Sized

from llmos.abi.log import LogEvent
from llmos.agents.sdk import Sys


class Baseline(Protocol):
    """The same LLM calls replayed one `generate` at a time (`llmos demo --baseline`)."""

    tokens: int
    seconds: float

    @property
    def tok_s(self) -> float: ...


class LocalKernel(Protocol):
    def session(self, name: str, fs_root: Path | None = None) -> Sys:
        """A session process (code outside any process that calls in) and its handle; its fs.*
        calls and its children's are confined to `fs_root` (default: the working directory)."""
        ...

    def watch(self) -> AbstractContextManager[AsyncIterator[LogEvent]]:
        """Every process's log lines, generated text and lifecycle from now on, while the
        context lasts (a watcher that falls behind loses events, as with log.follow)."""
        ...

    def describe(self) -> str:
        """Its model and whether it is loaded yet, for the shell's banner and `kernel` command."""
        ...

    def record_llm_calls(self) -> Sized:
        """From now on keep every LLM request, for `replay_baseline`."""
        ...

    async def replay_baseline(self, recorded: Sized) -> Baseline: ...


Boot = Callable[[], AbstractAsyncContextManager[LocalKernel]]
