"""The mount table: Model Context Protocol servers whose tools the kernel serves as syscalls.

A mount is a kernel service (like a filesystem driver): a task in the kernel's nursery that
runs the server as a subprocess speaking MCP over stdio (the official `mcp` SDK's client),
reads its tool list once, and holds the connection until `unmount`, kernel shutdown, or the
server's end (its stdout closes). A mount belongs to the kernel, not to the process that made
it. The server's stderr goes to <data dir>/mcp/<prefix>.log. A server that fails after start-up
takes its tools with it and never the kernel down. How a tool call is checked and turned into
a syscall reply is the syscall layer's business (syscalls/mcp.py).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

import anyio
import trio

from llmos.config import data_dir
from llmos.kernel.state.events import Event

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

MAX_TOOLS = 256
LIST_PAGES = 20


@dataclass(frozen=True)
class McpTool:
    name: str  # as a syscall: <prefix>.<tool>
    tool: str  # as the server knows it
    description: str
    schema: dict[str, Any]  # JSON schema of the arguments


@dataclass(eq=False)
class Mount:
    prefix: str
    command: str
    args: list[str]
    call_timeout: float  # seconds allowed for each tool call
    tools: dict[str, McpTool] = field(default_factory=dict)  # by syscall name
    client: Any = None  # the SDK's client session while connected
    unmount: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)

    async def call(self, tool: McpTool, arguments: dict[str, Any]) -> Any:
        """The server's result of one tool call (an mcp CallToolResult). LookupError if the
        server is no longer mounted."""
        client = self.client
        if client is None:
            raise LookupError(f"the MCP server at {self.prefix!r} is no longer mounted")
        return await client.call_tool(name=tool.tool, arguments=arguments)


class MountTable:
    """prefix -> Mount."""

    def __init__(self) -> None:
        self.mounts: dict[str, Mount] = {}

    def __contains__(self, prefix: str) -> bool:
        return prefix in self.mounts

    def __iter__(self):
        return iter(list(self.mounts.values()))

    def __len__(self) -> int:
        return len(self.mounts)

    def get(self, prefix: str) -> Mount | None:
        return self.mounts.get(prefix)

    def tool(self, name: str) -> tuple[Mount, McpTool] | None:
        """The mount and tool serving syscall `name`, if a mounted server has it."""
        prefix, dot, _ = name.partition(".")
        mount = self.mounts.get(prefix) if dot else None
        tool = mount.tools.get(name) if mount is not None else None
        return (mount, tool) if tool is not None else None

    async def mount(
        self, kernel: "Kernel", prefix: str, command: str, args: list[str], env: dict[str, str], cwd: Path,
        timeout: float, call_timeout: float,
    ) -> Mount:  # fmt: skip
        """Start the server and mount its tools. Raises trio.TooSlowError if it does not start
        within `timeout`, or what starting it raised (unwrapped from the SDK's task groups)."""
        m = Mount(prefix, command, list(args), call_timeout)
        self.mounts[prefix] = m  # reserved while starting, so two mounts cannot race for it
        try:
            with trio.fail_after(timeout):
                await kernel.start_service(self._serve, kernel, m, env, cwd, name=f"mcp {prefix}")
        except BaseException as exc:
            self.mounts.pop(prefix, None)
            if isinstance(exc, Exception) and not isinstance(exc, trio.TooSlowError):
                raise _first_cause(exc) from None
            raise
        return m

    async def unmount(self, prefix: str) -> bool:
        m = self.mounts.get(prefix)
        if m is None:
            return False
        m.unmount.set()
        await m.ended.wait()
        return True

    async def _serve(
        self, kernel: "Kernel", m: Mount, env: dict[str, str], cwd: Path, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """The mount's service task: connect, list the tools, wait for unmount, disconnect."""
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        started = False
        log_dir = data_dir() / "mcp"
        log_dir.mkdir(parents=True, exist_ok=True)
        params = StdioServerParameters(command=m.command, args=m.args, env=env or None, cwd=cwd)
        try:
            with open(log_dir / f"{m.prefix}.log", "ab") as errlog:
                async with Client(_watched(stdio_client(params, errlog=errlog), m.unmount)) as client:
                    m.client = client
                    for t in await _list_tools(client):
                        name = f"{m.prefix}.{t.name}"
                        description = (t.description or t.title or f"{t.name} (MCP tool of {m.prefix})").strip()
                        m.tools[name] = McpTool(name, t.name, description, dict(t.input_schema or {"type": "object"}))
                    task_status.started()
                    started = True
                    kernel.events.publish(Event(0, "log", f"mcp: mounted {m.prefix} ({len(m.tools)} tools)"))
                    await m.unmount.wait()  # set by unmount, or by _watched when the server goes away
        except Exception as exc:  # after start-up, a failing server must not stop the kernel
            if not started:
                raise
            kernel.events.publish(Event(0, "log", f"mcp: {m.prefix} ended: {type(exc).__name__}: {exc}"))
        finally:
            if self.mounts.get(m.prefix) is m:
                del self.mounts[m.prefix]
            m.client = None
            m.ended.set()


@asynccontextmanager
async def _watched(transport: Any, ended: trio.Event) -> AsyncIterator[tuple[Any, Any]]:
    """The transport's streams, with `ended` set when the server's side closes (it exited)."""
    async with transport as (read, write):
        forward, receive = anyio.create_memory_object_stream(0)

        async def pump() -> None:
            async with forward:
                async for message in read:
                    await forward.send(message)
            ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                yield receive, write
            finally:
                nursery.cancel_scope.cancel()


async def _list_tools(client: Any) -> list[Any]:
    tools, cursor = [], None
    for _ in range(LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None or len(tools) >= MAX_TOOLS:
            break
    return tools[:MAX_TOOLS]


def _first_cause(exc: BaseException) -> BaseException:
    """The error inside the task groups the SDK wraps it in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
