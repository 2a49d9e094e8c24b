"""Model Context Protocol servers whose tools are mounted as syscalls `<prefix>.<tool>`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from llmos.abi.catalogue import Empty, Ok, declare

DEFAULT_TIMEOUT = 30.0
Prefix = Annotated[str, StringConstraints(min_length=1, max_length=32)]


class MountRequest(BaseModel):
    model_config = {"extra": "forbid"}
    prefix: Prefix = Field(description='the name under which its tools appear, e.g. "notes"')
    command: str = Field(min_length=1, max_length=4096, description="the server's executable")
    args: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=256, description="its arguments"
    )
    env: dict[str, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict, max_length=64, description="environment variables added to a minimal safe environment"
    )
    timeout: float = Field(
        default=DEFAULT_TIMEOUT, gt=0, le=3600, description="seconds allowed for starting it and for each tool call"
    )
    call_timeout: float | None = Field(
        default=None, gt=0, le=3600, description="seconds allowed for each tool call, if not `timeout`"
    )


class Mounted(BaseModel):
    prefix: str
    tools: list[str]


class UnmountRequest(BaseModel):
    model_config = {"extra": "forbid"}
    prefix: Prefix


class MountInfo(BaseModel):
    prefix: str
    command: str
    args: list[str]
    tools: list[str]


class MountList(BaseModel):
    mounts: list[MountInfo]


class McpResult(BaseModel):
    """What every mounted MCP tool returns."""

    text: str  # the text blocks of the result, joined
    structured: Any = None  # the tool's structured result, when it gives one
    content: list[dict[str, Any]]  # every content block as the server sent it


declare(
    "mcp.mount", MountRequest, Mounted,
    doc="Start an MCP server (stdio) and mount its tools as syscalls named `<prefix>.<tool>`.",
)  # fmt: skip
declare("mcp.unmount", UnmountRequest, Ok, doc="Unmount an MCP server: its tools disappear and the server process is stopped.")
declare("mcp.list", Empty, MountList, doc="The MCP servers mounted, with their tools.")
