"""ipc.send / ipc.recv: messages between processes through their mailboxes (kernel/proc/ipc.py).

A message body is any JSON value up to 64 KiB, with an optional tag. `ipc.recv` takes the
oldest message matching a sender and/or tag; with none there, the process is BLOCKED on wchan
"ipc.recv", parked on a trio primitive until a send wakes it (no polling), its timeout passes
(ETIMEDOUT; EAGAIN for timeout=0, a non-blocking look) or the awaited sender exits (ESRCH).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import trio

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.ipc import MAX_BODY, Received, Sent
from llmos.abi.proc import KERNEL_PID
from llmos.kernel.proc.ipc import MailboxFull, Message
from llmos.kernel.proc.process import Process, ProcState
from llmos.syscalls.table import Call
from llmos.syscalls.tools import tool


@tool("ipc.send", timeout=None)
async def send(call: Call, pid: int, body: Any, tag: str | None = None) -> Sent:
    try:
        size = len(json.dumps(body, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise SyscallError(Errno.EINVAL, f"ipc.send: body must be a JSON value ({exc})") from None
    if size > MAX_BODY:
        raise SyscallError(Errno.E2BIG, f"ipc.send: body is {size} bytes of JSON; the limit is {MAX_BODY}")
    target = call.kernel.procs.get(pid)
    if pid == KERNEL_PID or target is None or not target.alive:
        raise SyscallError(Errno.ESRCH, f"no such process: {pid}")
    try:
        call.kernel.mailboxes.send(Message(sender=call.proc.pid, to=pid, body=body, tag=tag, size=size))
    except MailboxFull as exc:
        raise SyscallError(Errno.EAGAIN, str(exc)) from None
    return Sent(to=pid, pending=call.kernel.mailboxes.pending(pid))


@tool("ipc.recv", timeout=None)
async def recv(
    call: Call,
    from_pid: int | None = None,
    tag: str | None = None,
    timeout: float | None = None,
) -> Received:
    kernel, proc = call.kernel, call.proc
    message = None
    with trio.move_on_after(timeout if timeout is not None else float("inf")):
        while (message := kernel.mailboxes.take(proc.pid, from_pid, tag)) is None:
            if from_pid is not None and not _alive(call, from_pid):
                raise SyscallError(Errno.ESRCH, f"process {from_pid} has exited and left no such message")
            with blocked(proc, "ipc.recv"):
                await kernel.mailboxes.wait(proc.pid)
    if message is None:
        if timeout == 0:
            raise SyscallError(Errno.EAGAIN, "no message waiting")
        raise SyscallError(Errno.ETIMEDOUT, f"no message within {timeout:g} s")
    if proc.stopped:  # stopped while waiting: the call returns only once continued
        try:
            await proc.continued.wait()
        except BaseException:  # cancelled meanwhile: the message was not delivered, keep it
            kernel.mailboxes.put_back(message)
            raise
    return Received(
        sender=message.sender, tag=message.tag, body=message.body, sent=message.sent,
        pending=kernel.mailboxes.pending(proc.pid),
    )  # fmt: skip


def _alive(call: Call, pid: int) -> bool:
    p = call.kernel.procs.get(pid)
    return p is not None and p.alive


@contextmanager
def blocked(proc: Process, wchan: str) -> Iterator[None]:
    """The process is BLOCKED on `wchan` while inside; a stop that arrives meanwhile is kept."""
    proc.state, proc.wchan = ProcState.BLOCKED, wchan
    try:
        yield
    finally:
        if proc.alive:
            proc.wchan = ""
            if proc.stopped:
                proc.state_before_stop = ProcState.RUNNING
            else:
                proc.state = ProcState.RUNNING
