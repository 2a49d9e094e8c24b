"""The syscall table: a thin handler for every syscall the ABI (llmos.abi) declares.
Importing this package binds them all (registration happens on import)."""

from llmos.syscalls import (  # noqa: F401
    calc,
    clock,
    fs,
    ipc,
    kb,
    kstat,
    llm,
    log,
    mcp,
    mem,
    proc,
    quota,
    tools,
)
from llmos.syscalls.table import TABLE, dispatch

__all__ = ["TABLE", "dispatch"]
