"""log: a line in the process's log, visible to `logs` in the shell."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmos.kernel.state.events import Event
from llmos.syscalls.proc import Ok, target_process
from llmos.syscalls.table import Call, syscall


class LogRequest(BaseModel):
    model_config = {"extra": "forbid"}
    message: str = Field(max_length=65536)
    level: Literal["debug", "info", "warning", "error"] = "info"


@syscall("log", LogRequest, Ok)
async def log(call: Call, req: LogRequest) -> Ok:
    """Append a line to the caller's log."""
    call.proc.write_log(req.level, req.message)
    call.kernel.events.publish(Event(call.proc.pid, "log", req.message))
    return Ok()


class ReadLogRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int
    tail: int = Field(default=200, ge=1, le=10000)


class ReadLogResponse(BaseModel):
    pid: int
    lines: list[str]


@syscall("log.read", ReadLogRequest, ReadLogResponse)
async def read(call: Call, req: ReadLogRequest) -> ReadLogResponse:
    """The last lines of a process's log (the caller's own, a descendant's, or any for sessions)."""
    target = target_process(call, req.pid, alive=False)
    return ReadLogResponse(pid=target.pid, lines=list(target.log)[-req.tail :])


class FollowRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int


class LogEvent(BaseModel):
    pid: int
    kind: str
    text: str
    time: float


@syscall("log.follow", FollowRequest, Ok, chunk=LogEvent)
async def follow(call: Call, req: FollowRequest) -> Ok:
    """Stream a process's log lines, generated text and lifecycle events until it exits."""
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
