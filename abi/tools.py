"""Tools an agent (or its model) can discover and use: tools.list, and the built-in calc and
time.now. Every syscall is a tool; tools.list shows each with its JSON schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from llmos.abi.catalogue import Empty, declare

MAX_EXPRESSION = 1000  # characters


class ListToolsRequest(BaseModel):
    model_config = {"extra": "forbid"}
    names: list[Annotated[str, StringConstraints(max_length=256)]] | None = Field(
        default=None,
        max_length=256,
        description='name patterns ("kb.*", "calc") to narrow the list; all permitted syscalls if omitted',
    )


class ToolInfo(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments
    streaming: bool


class ToolList(BaseModel):
    tools: list[ToolInfo]


class CalcRequest(BaseModel):
    model_config = {"extra": "forbid"}
    expression: str = Field(
        min_length=1, max_length=MAX_EXPRESSION, description='the expression, e.g. "(3 + 4) * 12" or "sqrt(2) / 2"'
    )


class CalcResult(BaseModel):
    result: int | float


class Now(BaseModel):
    unix: float  # seconds since the epoch
    utc: str  # ISO 8601
    local: str  # ISO 8601 with the machine's offset
    timezone: str


declare(
    "tools.list", ListToolsRequest, ToolList,
    doc="The syscalls the caller may use, each with its description and its arguments' JSON schema.",
)  # fmt: skip
declare(
    "calc", CalcRequest, CalcResult,
    doc="""Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses, the
    functions sqrt exp log log10 log2 sin cos tan asin acos atan floor ceil abs round min max
    factorial hypot, and the constants pi, e, tau.""",
)  # fmt: skip
declare("time.now", Empty, Now, doc="The current date and time (UTC and local).")
