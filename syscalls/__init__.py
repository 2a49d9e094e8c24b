"""The syscall API. Importing this package fills the table with every family."""

from llmos.syscalls import fs, kstat, llm, log, proc  # noqa: F401  (registration happens on import)
from llmos.syscalls import mem  # noqa: F401
from llmos.syscalls import calc, clock, ipc, kb, mcp, quota, tools  # noqa: F401  (tools: see syscalls/tools.py)
from llmos.syscalls.errors import Errno, SyscallError
from llmos.syscalls.table import TABLE, dispatch

__all__ = ["TABLE", "Errno", "SyscallError", "dispatch"]
