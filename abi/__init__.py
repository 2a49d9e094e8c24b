"""The syscall ABI: what an agent program and the kernel agree on, and nothing else.

Every syscall's request and response models (one module per family), the catalogue that names
them (`SYSCALLS`), errors (`Errno`, `SyscallError`), process states and exit codes, and the
daemon's wire frames. It imports only pydantic and the standard library, so an agent worker,
the remote SDK and the shell's client side load it without loading the kernel (or torch).
"""

from llmos.abi import fs, ipc, kb, kstat, llm, log, mcp, mem, proc, tools  # noqa: F401  (each declares its syscalls)
from llmos.abi.catalogue import SYSCALLS, Empty, Ok, Spec
from llmos.abi.errors import Errno, ErrorInfo, SyscallError
from llmos.abi.proc import ProcessExit, ProcState

__all__ = ["SYSCALLS", "Empty", "Errno", "ErrorInfo", "Ok", "ProcState", "ProcessExit", "Spec", "SyscallError"]
