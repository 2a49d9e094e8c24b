"""The syscall table (xv6's syscall.c): name -> request model, response model, handler.

`dispatch` is the one door into the kernel. Every call, local or remote, passes here: it is
looked up, its arguments validated by pydantic, checked against the caller's capabilities,
counted, and run. Whatever goes wrong comes back as a SyscallError with an errno; nothing a
caller sends can raise anything else out of dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import trio
from pydantic import BaseModel, ValidationError

from llmos.kernel.kernel import Kernel, ProcessExit
from llmos.kernel.process import Process
from llmos.syscalls.errors import Errno, SyscallError

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


TABLE: dict[str, Syscall] = {}


def syscall(name: str, request: type[BaseModel], response: type[BaseModel], chunk: type[BaseModel] | None = None):
    """Register a handler under `name`."""

    def register(handler: Handler) -> Handler:
        if name in TABLE:
            raise ValueError(f"syscall {name!r} is already registered")
        doc = (handler.__doc__ or "").strip()
        TABLE[name] = Syscall(name, request, response, handler, chunk, doc)
        return handler

    return register


def validate(name: str, args: Any) -> tuple[Syscall, BaseModel]:
    entry = TABLE.get(name) if isinstance(name, str) else None
    if entry is None:
        raise SyscallError(Errno.ENOSYS, f"no such syscall: {name!r}")
    if isinstance(args, entry.request):
        return entry, args
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise SyscallError(Errno.EINVAL, f"{name}: arguments must be an object, got {type(args).__name__}")
    try:
        return entry, entry.request.model_validate(args)
    except ValidationError as exc:
        raise SyscallError(Errno.EINVAL, f"{name}: {_describe(exc)}", _details(exc)) from None


async def dispatch(kernel: Kernel, pid: int, name: str, args: Any = None, emit: Emit | None = None) -> BaseModel:
    proc = kernel.procs.get(pid)
    if proc is None or not proc.alive:
        raise SyscallError(Errno.ESRCH, f"calling process {pid} does not exist")
    if proc.killed:
        raise SyscallError(Errno.EKILLED, f"process {pid} has been killed")
    entry, request = validate(name, args)
    if not kernel.caps[pid].allows(entry.name):
        raise SyscallError(Errno.EPERM, f"{entry.name}: not permitted for process {pid} ({proc.name})")
    if proc.stopped:  # like a signal delivered at kernel entry: wait here until continued
        await proc.continued.wait()
    proc.syscalls += 1
    try:
        response = await entry.handler(Call(kernel, proc, emit), request)
    except (SyscallError, trio.Cancelled, ProcessExit):
        raise
    except Exception as exc:
        raise SyscallError(Errno.EIO, f"{entry.name} failed: {type(exc).__name__}: {exc}") from exc
    kernel.commit()  # what the caller is about to be told is on disk first (when journaled)
    return response


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def _details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in exc.errors()]
