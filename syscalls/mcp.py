"""MCP: mount the tools of a Model Context Protocol server as syscalls.

    mcp.mount(prefix="notes", command="python", args=["notes_server.py"])
      -> syscalls notes.search, notes.add, ... (one per tool the server lists)

The server runs as a subprocess speaking MCP over stdio, through the official `mcp` SDK's
client. Its tools become syscalls named `<prefix>.<tool>`: capability patterns ("notes.*"),
quotas, timeouts and the audit log apply to them as to any other syscall; their arguments are
checked against the tool's JSON schema before the server sees them, and `tools.list` shows
that schema. The tool list is read once, at mount time.

The connection is a kernel service task: it lives in the kernel's nursery, outlives the
syscall that mounted it, and ends at mcp.unmount or kernel shutdown (the SDK closes the
server's stdin, then terminates it). A mount belongs to the kernel, like a filesystem mount,
not to the process that made it. A server that dies takes its tools with it (calls then get
ENOSYS); it never takes the kernel down. The server's stderr goes to
<data dir>/mcp/<prefix>.log.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import anyio
import jsonschema
import trio
from pydantic import BaseModel, ConfigDict, create_model, model_validator

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.mcp import McpResult, Mounted, MountInfo, MountList
from llmos.config import data_dir
from llmos.kernel.state.events import Event
from llmos.syscalls.table import TABLE, Call, Syscall
from llmos.syscalls.tools import errno_for, run_bounded, tool

PREFIX = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_TOOLS = 256
LIST_PAGES = 20


@dataclass
class Mount:
    prefix: str
    command: str
    args: list[str]
    timeout: float
    client: Any = None  # mcp.Client, while connected
    syscalls: list[str] = field(default_factory=list)
    unmount: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)


@tool("mcp.mount", timeout=None)
async def mount(
    call: Call,
    prefix: str,
    command: str,
    args: list[str],
    env: dict[str, str],
    timeout: float,
    call_timeout: float | None,
) -> Mounted:
    kernel = call.kernel
    if not PREFIX.fullmatch(prefix):
        raise SyscallError(Errno.EINVAL, f"mcp.mount: prefix {prefix!r}: use a-z 0-9 _, starting with a letter")
    if prefix in kernel.mounts or any(name == prefix or name.startswith(prefix + ".") for name in TABLE):
        raise SyscallError(Errno.EBUSY, f"mcp.mount: prefix {prefix!r} is already in use")
    m = Mount(prefix, command, list(args), call_timeout or timeout)
    kernel.mounts[prefix] = m  # reserved while starting, so two mounts cannot race for it
    cwd = kernel.caps[call.proc.pid].fs_root
    try:
        with trio.fail_after(timeout):
            await kernel.start_service(_serve, kernel, m, dict(env), cwd, name=f"mcp {prefix}")
    except trio.TooSlowError:
        kernel.mounts.pop(prefix, None)
        raise SyscallError(Errno.ETIMEDOUT, f"mcp.mount: {command} did not start within {timeout:g} s") from None
    except BaseException as exc:
        kernel.mounts.pop(prefix, None)
        if isinstance(exc, (SyscallError, trio.Cancelled)) or not isinstance(exc, Exception):
            raise
        cause = _first_cause(exc)
        raise SyscallError(errno_for(cause), f"mcp.mount: {command}: {type(cause).__name__}: {cause}"[:2000]) from None
    return Mounted(prefix=prefix, tools=m.syscalls)


@tool("mcp.unmount", timeout=30)
async def unmount(call: Call, prefix: str) -> None:
    m = call.kernel.mounts.get(prefix)
    if m is None:
        raise SyscallError(Errno.ENOENT, f"mcp.unmount: nothing is mounted at {prefix!r}")
    m.unmount.set()
    await m.ended.wait()


@tool("mcp.list")
async def list_mounts(call: Call) -> MountList:
    return MountList(
        mounts=[MountInfo(prefix=m.prefix, command=m.command, args=m.args, tools=m.syscalls) for m in call.kernel.mounts.values()]
    )


async def _serve(kernel: Any, m: Mount, env: dict[str, str], cwd: Any, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The mount's service task: connect, mount the tools, wait for unmount, disconnect."""
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
                    entry = _syscall_for(m, t)
                    kernel.mounted[entry.name] = entry
                    m.syscalls.append(entry.name)
                task_status.started()
                started = True
                kernel.events.publish(Event(0, "log", f"mcp: mounted {m.prefix} ({len(m.syscalls)} tools)"))
                await m.unmount.wait()  # set by mcp.unmount, or by _watched when the server goes away
    except Exception as exc:  # after start-up, a failing server must not stop the kernel
        if not started:
            raise
        kernel.events.publish(Event(0, "log", f"mcp: {m.prefix} ended: {type(exc).__name__}: {exc}"))
    finally:
        for name in m.syscalls:
            kernel.mounted.pop(name, None)
        if kernel.mounts.get(m.prefix) is m:
            del kernel.mounts[m.prefix]
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


def _syscall_for(m: Mount, t: Any) -> Syscall:
    name = f"{m.prefix}.{t.name}"
    schema = dict(t.input_schema or {"type": "object"})

    async def handler(call: Call, req: BaseModel) -> McpResult:
        client = m.client
        if client is None:
            raise SyscallError(Errno.ENOSYS, f"{name}: the MCP server at {m.prefix!r} is no longer mounted")
        arguments = req.model_dump()
        result = await run_bounded(call, name, m.timeout, client.call_tool, {"name": t.name, "arguments": arguments}, True)
        text = "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")
        if result.is_error:
            raise SyscallError(Errno.EIO, f"{name}: {text or 'the tool reported an error'}"[:2000])
        return McpResult(
            text=text,
            structured=result.structured_content,
            content=[block.model_dump(mode="json", exclude_none=True) for block in result.content],
        )

    doc = (t.description or t.title or f"{t.name} (MCP tool of {m.prefix})").strip()
    return Syscall(name, _request_model(name, schema), McpResult, handler, None, doc, schema)


def _request_model(name: str, schema: dict[str, Any]) -> type[BaseModel]:
    """Arguments as a free-form object, checked against the tool's JSON schema (EINVAL)."""
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validator = cls(schema)
    except jsonschema.SchemaError:
        validator = None  # the server's schema is broken: the server will judge its arguments

    def check(data: Any) -> Any:
        if validator is not None and isinstance(data, dict):
            errors = list(validator.iter_errors(data))[:5]
            if errors:
                raise ValueError("; ".join(f"{_where(e)}: {e.message[:200]}" for e in errors))
        return data

    base = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part)
    return create_model(
        f"{base}Request",
        __config__=ConfigDict(extra="allow"),
        __validators__={"schema_check": model_validator(mode="before")(classmethod(lambda cls, data: check(data)))},
    )


def _first_cause(exc: Exception) -> Exception:
    """The error inside the task groups the SDK wraps it in."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(arguments)"
