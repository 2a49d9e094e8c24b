"""log: a line in the process's log, visible to `logs` in the shell."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from llmos.kernel.events import Event
from llmos.syscalls.proc import Ok
from llmos.syscalls.table import Call, syscall


class LogRequest(BaseModel):
    model_config = {"extra": "forbid"}
    message: str = Field(max_length=65536)
    level: Literal["debug", "info", "warning", "error"] = "info"


@syscall("log", LogRequest, Ok)
async def log(call: Call, req: LogRequest) -> Ok:
    """Append a line to the caller's log."""
    stamp = time.strftime("%H:%M:%S")
    for line in req.message.splitlines() or [""]:
        call.proc.log.append(f"{stamp} {req.level:<7} {line}")
    call.kernel.events.publish(Event(call.proc.pid, "log", req.message))
    return Ok()
