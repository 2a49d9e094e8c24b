"""MCP: a real stdio MCP server (tests/mcp_server_fixture.py, official SDK) mounted as syscalls."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from conftest import errno_of, run

from llmos.abi.errors import Errno, SyscallError
from llmos.kernel.proc.capabilities import Capabilities
from llmos.runtime import local_handle
from llmos.syscalls.table import every_syscall

SERVER = str(Path(__file__).parent / "mcp_server_fixture.py")


def test_mount_call_and_unmount(tiny_backend, tmp_path):
    async def body(kernel, sh):
        box = local_handle(kernel, kernel.session("box", Capabilities(fs_root=tmp_path)))
        names = await box.mcp.mount("fx", sys.executable, SERVER, timeout=60)
        out = {"names": names}
        out["add"] = await box.call("fx.add", a=2, b=3)
        await box.call("fx.remember", key="k", value="kept across calls")
        out["recall"] = (await box.call("fx.recall", key="k")).text
        out["cwd"] = (await box.call("fx.cwd")).text
        out["listed"] = {t.name: t for t in await box.tools.list("fx.*")}
        out["mounts"] = await box.mcp.list()
        out["bad_args"] = await errno_of(box.call("fx.add", a="two", b=3))
        out["missing_arg"] = await errno_of(box.call("fx.add", a=2))
        with pytest.raises(SyscallError) as tool_error:
            await box.call("fx.recall", key="nope")
        out["tool_error"] = tool_error.value
        out["busy"] = await errno_of(box.mcp.mount("fx", sys.executable, SERVER))
        out["reserved"] = await errno_of(box.mcp.mount("fs", sys.executable, SERVER))
        await box.mcp.unmount("fx")
        out["after_unmount"] = await errno_of(box.call("fx.add", a=1, b=1))
        out["left"] = ([n for n in every_syscall(kernel) if n.startswith("fx.")], len(kernel.mounts))
        return out

    out = run(tiny_backend, body)
    assert set(out["names"]) == {f"fx.{n}" for n in ("add", "remember", "recall", "cwd", "slow", "crash")}
    assert out["add"].text == "5" and out["add"].structured == {"result": 5}
    assert out["recall"] == "kept across calls"
    assert out["cwd"] == str(tmp_path)  # the server starts in the caller's root
    add = out["listed"]["fx.add"]
    assert add.description == "Add two integers." and add.parameters["required"] == ["a", "b"]
    assert [m.prefix for m in out["mounts"]] == ["fx"]
    assert out["bad_args"] is out["missing_arg"] is Errno.EINVAL  # refused before the server saw them
    assert out["tool_error"].errno is Errno.EIO and "no note named nope" in out["tool_error"].message
    assert out["busy"] is out["reserved"] is Errno.EBUSY
    assert out["after_unmount"] is Errno.ENOSYS
    assert out["left"] == ([], 0)


def test_mounted_tools_obey_capabilities_and_timeouts(tiny_backend):
    async def body(kernel, sh):
        await sh.mcp.mount("fx", sys.executable, SERVER, timeout=60, call_timeout=1.5)
        limited = local_handle(kernel, kernel.session("limited", Capabilities(allow=("fx.add", "mcp.*"))))
        out = {
            "allowed": (await limited.call("fx.add", a=1, b=2)).text,
            "denied": await errno_of(limited.call("fx.recall", key="k")),
            "mount_denied": await errno_of(
                local_handle(kernel, kernel.session("nomount", Capabilities(allow=("fx.*",)))).mcp.mount("x", "true")
            ),
            "timeout": await errno_of(sh.call("fx.slow", seconds=10)),
            "after_timeout": (await sh.call("fx.add", a=20, b=22)).text,
        }
        return out

    out = run(tiny_backend, body)
    assert out["allowed"] == "3"
    assert out["denied"] is out["mount_denied"] is Errno.EPERM
    assert out["timeout"] is Errno.ETIMEDOUT
    assert out["after_timeout"] == "42"


def test_a_dying_server_never_takes_the_kernel_down(tiny_backend):
    async def body(kernel, sh):
        out = {
            "no_command": await errno_of(sh.mcp.mount("ghost", "/no/such/server")),
            "silent": await errno_of(sh.mcp.mount("mute", sys.executable, "-c", "import time; time.sleep(60)", timeout=1)),
        }
        await sh.mcp.mount("fx", sys.executable, SERVER, timeout=60)
        out["crash"] = await errno_of(sh.call("fx.crash"))
        with trio.fail_after(10):
            while kernel.mounts:
                await trio.sleep(0.05)
        out["after_crash"] = await errno_of(sh.call("fx.add", a=1, b=1))
        out["kernel_ok"] = (await sh.call("calc", expression="6 * 7")).result
        out["remount"] = await sh.mcp.mount("fx", sys.executable, SERVER, timeout=60)
        out["works_again"] = (await sh.call("fx.add", a=1, b=1)).text
        return out

    out = run(tiny_backend, body)
    assert out["no_command"] is Errno.ENOENT
    assert out["silent"] is Errno.ETIMEDOUT
    assert out["crash"] is Errno.EIO
    assert out["after_crash"] is Errno.ENOSYS
    assert out["kernel_ok"] == 42 and out["works_again"] == "2"


def test_shell_commands_for_tools_mounts_and_messages(tiny_backend):
    from io import StringIO

    from rich.console import Console

    from llmos.shell.shell import Shell

    async def body(kernel, sh):
        out = StringIO()
        shell = Shell(sh, Console(file=out, width=200))
        await shell.execute(f"mount fx {sys.executable} {SERVER}")
        await shell.execute("tools fx.add calc")
        other = local_handle(kernel, kernel.session("other"))
        await shell.execute(f"send --json {other.pid} {{\"n\": 1}}")  # JSON when asked; else the line as typed
        await shell.execute(f"send {other.pid} plain words")
        await shell.execute("umount fx")
        await shell.execute("tools fx.*")
        got = [(await other.ipc.recv(timeout=0)).body for _ in range(2)]
        return out.getvalue(), got

    text, got = run(tiny_backend, body)
    assert "mounted fx: fx.add" in text
    assert "fx.add(a: integer, b: integer)" in text and "Add two integers." in text and "calc(expression: string)" in text
    assert "unmounted fx" in text and "no tools match" in text
    assert got == [{"n": 1}, "plain words"]


def test_tool_loop_constrains_mcp_tools_by_their_own_schemas(tiny_backend):
    """The tool loop's reply schema holds a mounted tool's arguments to the server's JSON
    schema; the (random) model's calls are then always valid for it, and run."""

    async def body(kernel, sh):
        await sh.mcp.mount("fx", sys.executable, SERVER, timeout=60)
        formats = []

        async def chat(messages, max_tokens, **sampling):
            formats.append(sampling["response_format"])
            return (await sh.llm.chat(messages, max_tokens=max_tokens, **sampling)).content

        result = await sh.tools.run("Add 2 and 3.", ["fx.add"], tool_choice="required", max_steps=1, chat=chat)
        return formats, result

    formats, result = run(tiny_backend, body)
    schema = formats[0]["json_schema"]
    assert schema["properties"]["tool"] == {"const": "fx.add"}  # required: a call of the one tool
    arguments = schema["properties"]["arguments"]
    assert set(arguments["required"]) == {"a", "b"} and arguments["properties"]["a"]["type"] == "integer"
    step = result.steps[0]
    assert step.tool == "fx.add" and isinstance(step.arguments["a"], int) and isinstance(step.arguments["b"], int)
    assert step.error is None and not result.corrections
