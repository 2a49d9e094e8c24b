"""Process logs: writing a line, reading the tail, following a process."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmos.abi.catalogue import Ok, declare


class LogRequest(BaseModel):
    model_config = {"extra": "forbid"}
    message: str = Field(max_length=65536)
    level: Literal["debug", "info", "warning", "error"] = "info"


class ReadLogRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int
    tail: int = Field(default=200, ge=1, le=10000)


class ReadLogResponse(BaseModel):
    pid: int
    lines: list[str]


class FollowRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int


class LogEvent(BaseModel):
    pid: int
    kind: str
    text: str
    time: float


declare("log", LogRequest, Ok, doc="Append a line to the caller's log.")
declare(
    "log.read", ReadLogRequest, ReadLogResponse,
    doc="The last lines of a process's log (the caller's own, a descendant's, or any for sessions).",
)  # fmt: skip
declare(
    "log.follow", FollowRequest, Ok, LogEvent,
    doc="Stream a process's log lines, generated text and lifecycle events until it exits.",
)  # fmt: skip
