"""MCP: the tools of Model Context Protocol servers mounted as syscalls.

    mcp.mount(prefix="notes", command="python", args=["notes_server.py"])
      -> syscalls notes.search, notes.add, ... (one per tool the server lists)

The kernel's mount table (kernel/mcp.py) runs the servers; here their tools become syscalls
named `<prefix>.<tool>`: capability patterns ("notes.*"), quotas, timeouts and the audit log
apply to them as to any other syscall; their arguments are checked against the tool's JSON
schema before the server sees them, and `tools.list` shows that schema. A server that dies
takes its tools with it (calls then get ENOSYS).
"""

from __future__ import annotations

import re
import weakref
from typing import Any

import jsonschema
import trio
from pydantic import BaseModel, ConfigDict, create_model, model_validator

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.mcp import McpResult, Mounted, MountInfo, MountList
from llmos.kernel.kernel import Kernel
from llmos.kernel.mcp import McpTool, Mount
from llmos.syscalls.table import TABLE, Call, Syscall, mounted_source
from llmos.syscalls.tools import errno_for, run_bounded, tool

PREFIX = re.compile(r"[a-z][a-z0-9_]{0,31}")


@tool("mcp.mount", timeout=None)
async def mount(
    call: Call, prefix: str, command: str, args: list[str], env: dict[str, str], timeout: float, call_timeout: float | None
) -> Mounted:
    kernel = call.kernel
    if not PREFIX.fullmatch(prefix):
        raise SyscallError(Errno.EINVAL, f"mcp.mount: prefix {prefix!r}: use a-z 0-9 _, starting with a letter")
    if prefix in kernel.mounts or any(name == prefix or name.startswith(prefix + ".") for name in TABLE):
        raise SyscallError(Errno.EBUSY, f"mcp.mount: prefix {prefix!r} is already in use")
    cwd = kernel.caps[call.proc.pid].fs_root
    try:
        m = await kernel.mounts.mount(kernel, prefix, command, args, env, cwd, timeout, call_timeout or timeout)
    except trio.TooSlowError:
        raise SyscallError(Errno.ETIMEDOUT, f"mcp.mount: {command} did not start within {timeout:g} s") from None
    except Exception as exc:
        raise SyscallError(errno_for(exc), f"mcp.mount: {command}: {type(exc).__name__}: {exc}"[:2000]) from None
    return Mounted(prefix=prefix, tools=list(m.tools))


@tool("mcp.unmount", timeout=30)
async def unmount(call: Call, prefix: str) -> None:
    if not await call.kernel.mounts.unmount(prefix):
        raise SyscallError(Errno.ENOENT, f"mcp.unmount: nothing is mounted at {prefix!r}")


@tool("mcp.list")
async def list_mounts(call: Call) -> MountList:
    return MountList(
        mounts=[MountInfo(prefix=m.prefix, command=m.command, args=m.args, tools=list(m.tools)) for m in call.kernel.mounts]
    )


# -- a mounted tool as a syscall -----------------------------------------------------------

_entries: weakref.WeakKeyDictionary[Mount, dict[str, Syscall]] = weakref.WeakKeyDictionary()


@mounted_source
def mounted(kernel: Kernel, name: str | None) -> dict[str, Syscall]:
    """The table entries of the tools mounted on `kernel` (only `name`'s, if given)."""
    if name is not None:
        found = kernel.mounts.tool(name)
        return {name: _entry(*found)} if found is not None else {}
    return {t.name: _entry(m, t) for m in kernel.mounts for t in m.tools.values()}


def _entry(m: Mount, t: McpTool) -> Syscall:
    entries = _entries.setdefault(m, {})
    if t.name not in entries:
        entries[t.name] = _syscall_for(m, t)
    return entries[t.name]


def _syscall_for(m: Mount, t: McpTool) -> Syscall:
    async def handler(call: Call, req: BaseModel) -> McpResult:
        if m.client is None:
            raise SyscallError(Errno.ENOSYS, f"{t.name}: the MCP server at {m.prefix!r} is no longer mounted")
        result = await run_bounded(call, t.name, m.call_timeout, m.call, {"tool": t, "arguments": req.model_dump()}, True)
        text = "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")
        if result.is_error:
            raise SyscallError(Errno.EIO, f"{t.name}: {text or 'the tool reported an error'}"[:2000])
        return McpResult(
            text=text,
            structured=result.structured_content,
            content=[block.model_dump(mode="json", exclude_none=True) for block in result.content],
        )

    return Syscall(t.name, _request_model(t.name, t.schema), McpResult, handler, None, t.description, t.schema)


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


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(arguments)"
