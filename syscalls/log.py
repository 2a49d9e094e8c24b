"""log: a line in the process's log, visible to `logs` in the shell."""

from __future__ import annotations

from llmos.abi import Ok
from llmos.abi.log import (
    FollowRequest,
    LogEvent,
    LogRequest,
    ReadLogRequest,
    ReadLogResponse,
)
from llmos.kernel.state.events import Event
from llmos.syscalls.proc import target_process
from llmos.syscalls.table import Call, syscall


@syscall("log")
async def log(call: Call, req: LogRequest) -> Ok:
    call.proc.write_log(req.level, req.message)
    call.kernel.events.publish(Event(call.proc.pid, "log", req.message))
    return Ok()


@syscall("log.read")
async def read(call: Call, req: ReadLogRequest) -> ReadLogResponse:
    target = target_process(call, req.pid, alive=False)
    return ReadLogResponse(pid=target.pid, lines=list(target.log)[-req.tail :])


@syscall("log.follow")
async def follow(call: Call, req: FollowRequest) -> Ok:
    target = target_process(call, req.pid, alive=False)
    with call.kernel.events.watch() as events:
        if not target.alive:  # checked after watching starts, so the exit cannot slip between
            return Ok()
        async for event in events:
            if event.pid != target.pid:
                continue
            await call.send(LogEvent(pid=event.pid, kind=event.kind, text=event.text, time=event.time))
            if event.kind == "exit":
                break
    return Ok()
