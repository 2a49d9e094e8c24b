"""The syscall table (xv6's syscall.c): name -> request model, response model, handler.

`dispatch` is the one door into the kernel. Every call, local or remote, passes here: it is
counted against the caller's quota, looked up (the built-in table, then the syscalls mounted
on this kernel at run time, such as MCP tools), its arguments validated by pydantic, checked
against the caller's capabilities, run, and written to the audit log with its outcome and
duration. Whatever goes wrong comes back as a SyscallError with an errno; nothing a caller
sends can raise anything else out of dispatch.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import trio
from pydantic import BaseModel, ValidationError

from llmos.abi import SYSCALLS, ProcessExit
from llmos.abi.errors import Errno, SyscallError, killed
from llmos.kernel.kernel import Kernel
from llmos.kernel.proc.process import Process

Emit = Callable[[BaseModel], Awaitable[None]]


@dataclass
class Call:
    """What a handler gets besides its request: who is calling, and where stream chunks go."""

    kernel: Kernel
    proc: Process
    emit: Emit | None = None

    async def send(self, chunk: BaseModel) -> None:
        if self.emit is not None:
            await self.emit(chunk)


Handler = Callable[[Call, Any], Awaitable[BaseModel]]


@dataclass(frozen=True)
class Syscall:
    name: str
    request: type[BaseModel]
    response: type[BaseModel]
    handler: Handler
    chunk: type[BaseModel] | None  # streaming syscalls send these before the response
    doc: str
    schema: dict[str, Any] | None = None  # arguments' JSON schema when not the request model's (MCP tools)

    def arguments_schema(self) -> dict[str, Any]:
        return self.schema if self.schema is not None else _schema(self.request)


TABLE: dict[str, Syscall] = {}


def syscall(name: str):
    """Bind the decorated handler to the syscall the ABI declares as `name` (llmos.abi): its
    request, response and chunk models and its description come from there."""
    spec = SYSCALLS.get(name)
    if spec is None:
        raise ValueError(f"syscall {name!r} is not declared in the ABI (llmos.abi)")

    def register(handler: Handler) -> Handler:
        add(Syscall(name, spec.request, spec.response, handler, spec.chunk, spec.doc))
        return handler

    return register


def add(entry: Syscall) -> None:
    """Put an entry in the table (a handler for a declared syscall, or a tool made at run time)."""
    if entry.name in TABLE:
        raise ValueError(f"syscall {entry.name!r} is already registered")
    TABLE[entry.name] = entry


# Where syscalls added at run time come from (MCP tools: syscalls/mcp.py): each source gives
# the entries it serves on a kernel (only the named one's, if a name is given).
MountedSource = Callable[[Kernel, "str | None"], dict[str, Syscall]]
_mounted_sources: list[MountedSource] = []


def mounted_source(source: MountedSource) -> MountedSource:
    _mounted_sources.append(source)
    return source


def every_syscall(kernel: Kernel) -> dict[str, Syscall]:
    """The built-in table and everything mounted on `kernel`."""
    entries = dict(TABLE)
    for source in _mounted_sources:
        entries.update(source(kernel, None))
    return entries


TOO_LONG = {"string_too_long", "too_long", "bytes_too_long"}  # pydantic error types that mean "oversized"


def lookup(kernel: Kernel, name: Any) -> Syscall:
    entry = None
    if isinstance(name, str):
        entry = TABLE.get(name)
        for source in _mounted_sources if entry is None else ():
            entry = source(kernel, name).get(name) or entry
    if entry is None:
        raise SyscallError(Errno.ENOSYS, f"no such syscall: {name!r}"[:300])
    return entry


def validate(entry: Syscall, args: Any) -> BaseModel:
    name = entry.name
    if isinstance(args, entry.request):
        return args
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise SyscallError(Errno.EINVAL, f"{name}: arguments must be an object, got {type(args).__name__}")
    try:
        return entry.request.model_validate(args)
    except ValidationError as exc:
        errors = exc.errors()
        errno = Errno.E2BIG if any(e["type"] in TOO_LONG for e in errors) else Errno.EINVAL
        raise SyscallError(errno, f"{name}: {_describe(exc)}", _details(exc)) from None


async def dispatch(kernel: Kernel, pid: int, name: str, args: Any = None, emit: Emit | None = None) -> BaseModel:
    started = time.perf_counter()
    outcome = "ERROR"
    try:
        response = await _dispatch(kernel, pid, name, args, emit)
        outcome = "OK"
        return response
    except SyscallError as exc:
        outcome = exc.errno.value
        raise
    except trio.Cancelled:
        outcome = "CANCELLED"
        raise
    except ProcessExit:
        outcome = "EXIT"
        raise
    finally:
        kernel.audit.record(pid, name, args, outcome, time.perf_counter() - started)


async def _dispatch(kernel: Kernel, pid: int, name: Any, args: Any, emit: Emit | None) -> BaseModel:
    proc = kernel.procs.get(pid)
    if proc is None or not proc.alive:
        raise SyscallError(Errno.ESRCH, f"calling process {pid} does not exist")
    if proc.killed:
        raise killed(pid, proc.kill_reason)
    proc.syscalls += 1
    if not kernel.enforce_quota(proc):
        raise killed(pid, proc.kill_reason)
    entry = lookup(kernel, name)
    request = validate(entry, args)
    if not kernel.caps[pid].allows(entry.name):
        raise SyscallError(Errno.EPERM, f"{entry.name}: not permitted for process {pid} ({proc.name})")
    await kernel.held(proc)  # stopped: a signal delivered at kernel entry holds it here
    try:
        response = await entry.handler(Call(kernel, proc, emit), request)
    except SyscallError:
        await kernel.held(proc)  # ... and on the way back (an error is a return too)
        raise
    except (trio.Cancelled, ProcessExit):
        raise
    except Exception as exc:
        raise SyscallError(Errno.EIO, f"{entry.name} failed: {type(exc).__name__}: {exc}") from exc
    await kernel.held(proc)  # stopped during the call: it returns once continued
    kernel.commit()  # what the caller is about to be told is on disk first (when journaled)
    return response


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def _details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in exc.errors()]
