"""ipc.send / ipc.recv: messages between processes through their mailboxes (kernel/proc/ipc.py).

A message body is any JSON value up to 64 KiB, with an optional tag. `ipc.recv` takes the
oldest message matching a sender and/or tag; with none there, the process is BLOCKED on wchan
"ipc.recv", parked on a trio primitive until a send wakes it (no polling), its timeout passes
(ETIMEDOUT; EAGAIN for timeout=0, a non-blocking look) or the awaited sender exits (ESRCH).
"""

from __future__ import annotations

import json
from typing import Any

import trio

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.ipc import MAX_BODY, Received, Sent
from llmos.abi.proc import KERNEL_PID
from llmos.kernel.kernel import SenderGone
from llmos.kernel.proc.ipc import MailboxFull, Message
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
        pending = call.kernel.send(Message(sender=call.proc.pid, to=pid, body=body, tag=tag, size=size))
    except MailboxFull as exc:
        raise SyscallError(Errno.EAGAIN, str(exc)) from None
    return Sent(to=pid, pending=pending)


@tool("ipc.recv", timeout=None)
async def recv(call: Call, from_pid: int | None = None, tag: str | None = None, timeout: float | None = None) -> Received:
    message = None
    with trio.move_on_after(timeout if timeout is not None else float("inf")):
        try:
            message = await call.kernel.receive(call.proc, from_pid, tag)
        except SenderGone:
            raise SyscallError(Errno.ESRCH, f"process {from_pid} has exited and left no such message") from None
    if message is None:
        if timeout == 0:
            raise SyscallError(Errno.EAGAIN, "no message waiting")
        raise SyscallError(Errno.ETIMEDOUT, f"no message within {timeout:g} s")
    return Received(
        sender=message.sender, tag=message.tag, body=message.body, sent=message.sent,
        pending=call.kernel.mailboxes.pending(call.proc.pid),
    )  # fmt: skip
