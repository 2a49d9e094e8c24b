"""Tools are syscalls: the decorator, built-in tools, capabilities, quotas and the audit log.

Runs on the tiny model (the kernel needs a backend; only the max_tokens test generates)."""

from __future__ import annotations

import json
import time

import pytest
import trio
from conftest import errno_of, prog, run

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.proc import EXIT_QUOTA
from llmos.kernel.proc.capabilities import Capabilities
from llmos.kernel.proc.quota import Quota
from llmos.kernel.state.audit import AuditLog
from llmos.runtime import local_handle
from llmos.syscalls import TABLE
from llmos.syscalls.table import Call
from llmos.syscalls.tools import tool


def sandbox(kernel, name="box", **caps):
    """A session process with the given capabilities."""
    return local_handle(kernel, kernel.session(name, Capabilities(**caps)))


# -- tools made by the decorator ------------------------------------------------------------


@tool("test.add")
def add(a: int, b: int = 2) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


@tool("test.nap", timeout=0.2)
async def nap(seconds: float) -> str:
    """Sleeps (async)."""
    await trio.sleep(seconds)
    return "rested"


@tool("test.hang", timeout=0.2)
def hang() -> None:
    """A sync tool that hangs."""
    time.sleep(3)


@tool("test.boom")
def boom(kind: str) -> None:
    """Raises."""
    if kind == "value":
        raise ValueError("bad value")
    if kind == "missing":
        raise FileNotFoundError("nothing there")
    raise RuntimeError("tool bug")


@tool("test.whoami")
async def whoami(call: Call, shout: bool = False) -> str:
    """Who is calling."""
    name = call.proc.name
    return name.upper() if shout else name


def test_decorator_builds_request_response_and_schema():
    entry = TABLE["test.add"]
    schema = entry.arguments_schema()
    assert entry.doc == "Add two integers."
    assert schema["required"] == ["a"]
    assert schema["properties"]["a"]["type"] == "integer"
    assert schema["properties"]["b"]["default"] == 2
    assert schema["properties"]["a"]["description"] == "the first"
    assert schema["additionalProperties"] is False
    assert set(entry.response.model_fields) == {"result"}
    assert "call" not in TABLE["test.whoami"].arguments_schema()["properties"]  # the Call is injected
    with pytest.raises(TypeError):
        tool("test.untyped")(lambda x: x)
    with pytest.raises(TypeError):

        @tool("test.sync_with_call")
        def sync_with_call(call: Call) -> None:
            pass


def test_tools_run_and_fail_with_typed_errors(tiny_backend):
    async def body(kernel, sh):
        out = {
            "sync": (await sh.call("test.add", a=40)).result,
            "async": (await sh.call("test.nap", seconds=0)).result,
            "call": (await sh.call("test.whoami", shout=True)).result,
        }
        started = time.monotonic()
        out["async_timeout"] = await errno_of(sh.call("test.nap", seconds=10))
        out["sync_timeout"] = await errno_of(sh.call("test.hang"))
        out["timeouts_took"] = time.monotonic() - started
        out["value_error"] = await errno_of(sh.call("test.boom", kind="value"))
        out["not_found"] = await errno_of(sh.call("test.boom", kind="missing"))
        out["bug"] = await errno_of(sh.call("test.boom", kind="bug"))
        out["wrong_type"] = await errno_of(sh.call("test.add", a="forty"))
        out["missing_arg"] = await errno_of(sh.call("test.add"))
        out["extra_arg"] = await errno_of(sh.call("test.add", a=1, c=3))
        out["oversized"] = await errno_of(sh.call("test.boom", kind="x" * (2 << 20)))
        out["unknown"] = await errno_of(sh.call("test.nope"))
        out["log"] = await sh.read_log(sh.pid)
        out["after"] = (await sh.call("test.add", a=1, b=1)).result  # the kernel is fine
        return out

    out = run(tiny_backend, body)
    assert out["sync"] == 42 and out["async"] == "rested" and out["call"] == "TEST"
    assert out["async_timeout"] is out["sync_timeout"] is Errno.ETIMEDOUT
    assert out["timeouts_took"] < 2.5  # the hung thread was abandoned, not waited for (3 s)
    assert out["value_error"] is Errno.EINVAL
    assert out["not_found"] is Errno.ENOENT
    assert out["bug"] is Errno.EIO
    assert any("RuntimeError: tool bug" in line for line in out["log"])  # the traceback is logged
    assert out["wrong_type"] is out["missing_arg"] is out["extra_arg"] is Errno.EINVAL
    assert out["oversized"] is Errno.E2BIG
    assert out["unknown"] is Errno.ENOSYS
    assert out["after"] == 2


def test_calc_is_safe_arithmetic(tiny_backend):
    async def body(kernel, sh):
        async def calc(expression):
            try:
                return (await sh.call("calc", expression=expression)).result
            except SyscallError as exc:
                return exc.errno

        exprs = [
            "(3 + 4) * 12", "2 ** 10", "sqrt(16) + pi - pi", "7 // 2 + 7 % 2", "-(-3)", "max(1, 5, 3)",
            "1 / 0", "9 ** 9 ** 9", "__import__('os').system('true')", "open('x')", "x + 1", "2 if 1 else 3",
            "(lambda: 1)()", "[1, 2]", "'a' * 3", "", "10 ** 5000", "factorial(5000)", "sqrt(-1)",
            "(" * 300 + "1" + ")" * 300,
        ]  # fmt: skip
        return [await calc("-" * 901 + "1"), await calc("1" * 1001)] + [await calc(e) for e in exprs]

    deep, oversized, *results = run(tiny_backend, body)
    assert deep == -1 and oversized is Errno.E2BIG
    assert results[:6] == [84, 1024, 4.0, 4, 3, 5]
    assert all(r is Errno.EINVAL for r in results[6:]), results[6:]


def test_time_now(tiny_backend):
    async def body(kernel, sh):
        return await sh.call("time.now")

    now = run(tiny_backend, body)
    assert abs(now.unix - time.time()) < 60 and now.utc.endswith("+00:00")


def test_tools_list_shows_only_what_the_caller_may_use(tiny_backend):
    async def body(kernel, sh):
        box = sandbox(kernel, allow=("calc", "time.*", "tools.list"))
        return [t.name for t in await box.tools.list()], await box.tools.list("calc"), await errno_of(box.call("test.add", a=1))

    names, calc_only, denied = run(tiny_backend, body)
    assert names == ["calc", "time.now", "tools.list"]
    assert len(calc_only) == 1 and calc_only[0].parameters["required"] == ["expression"]
    assert "arithmetic" in calc_only[0].description
    assert denied is Errno.EPERM


def test_audit_log_has_one_line_per_syscall(tiny_backend, tmp_path):
    path = tmp_path / "audit.jsonl"

    async def body(kernel, sh):
        kernel.audit = AuditLog(path)
        await sh.call("calc", expression="1 + 1")
        await errno_of(sh.call("no.such"))
        await errno_of(sh.call("calc", expression=3))
        box = sandbox(kernel, allow=("calc",))
        await errno_of(box.call("test.add", a=1))
        return sh.pid, box.pid

    sh_pid, box_pid = run(tiny_backend, body)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["pid"], r["syscall"], r["result"]) for r in lines] == [
        (sh_pid, "calc", "OK"),
        (sh_pid, "no.such", "ENOSYS"),
        (sh_pid, "calc", "EINVAL"),
        (box_pid, "test.add", "EPERM"),
    ]
    assert lines[0]["args"] == {"expression": "1 + 1"}
    assert all(isinstance(r["duration_ms"], float) and r["time"] > 0 for r in lines)


def test_audit_summarises_large_arguments(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    log.record(3, "fs.write", {"path": "x.txt", "content": "s" * 5000, "items": [1, 2, 3], "bad": "\ud800"}, "OK", 0.001)
    log.record(3, ["not", "a", "name"], "not an object", "EINVAL", 0.0)
    first, second = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert first["args"] == {"path": "x.txt", "content": "<str 5000 chars>", "items": "<list 3 items>", "bad": "\ud800"}
    assert second["syscall"] == "<list 3 items>" and second["result"] == "EINVAL"


# -- quotas ---------------------------------------------------------------------------------


def test_quota_max_syscalls_kills_a_looping_agent(tiny_backend):
    async def body(kernel, sh):
        looper = await sh.proc.spawn(prog("looper"), quota={"max_syscalls": 20})
        bystander = await sh.proc.spawn(prog("sleeper"), "0.2")
        return await sh.proc.wait(looper), await sh.proc.wait(bystander), kernel.procs.lookup(looper).syscalls

    status, bystander, calls = run(tiny_backend, body)
    assert status.exit_code == EXIT_QUOTA and status.reason == "quota exceeded: max_syscalls 20"
    assert calls == 21  # the 21st call is the one refused
    assert bystander.exit_code == 0 and bystander.result == "woke"


def test_quota_max_wall_time_kills_through_the_cancel_scope(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("sleeper"), quota={"max_wall_time": 0.3})
        return await sh.proc.wait(pid)

    status = run(tiny_backend, body)
    assert status.exit_code == EXIT_QUOTA and status.reason == "quota exceeded: max_wall_time 0.3 s"


def test_quota_max_tokens_stops_generation(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("talker"), "3000", quota={"max_tokens": 60})
        status = await sh.proc.wait(pid)
        proc = kernel.procs.lookup(pid)
        return status, proc.prompt_tokens + proc.generated_tokens, len(kernel.scheduler)

    status, used, queued = run(tiny_backend, body)
    assert status.exit_code == EXIT_QUOTA and status.reason.startswith("quota exceeded: max_tokens 60")
    assert used == 61 and queued == 0  # killed by the first token over the limit; left the batch


def test_child_quota_never_exceeds_what_the_parent_has_left(tiny_backend):
    async def body(kernel, sh):
        parent = kernel.session("parent", Capabilities(quota=Quota(max_tokens=100, max_syscalls=50, max_wall_time=60)))
        handle = local_handle(kernel, parent)
        parent.generated_tokens = 30  # as if it had generated 30 tokens
        greedy = await handle.proc.spawn(
            prog("limits"), quota={"max_tokens": 1000, "max_syscalls": 1000, "max_memory_pages": 8}
        )
        modest = await handle.proc.spawn(prog("limits"), quota={"max_tokens": 10})
        inherits = await handle.proc.spawn(prog("limits"))
        return [(await handle.proc.wait(pid)).result for pid in (greedy, modest, inherits)]

    greedy, modest, inherits = run(tiny_backend, body)
    assert greedy["quota"]["max_tokens"] == 70  # 100 - 30 used
    assert greedy["quota"]["max_syscalls"] <= 50 - 1  # the parent's spawn call counts
    assert greedy["quota"]["max_wall_time"] <= 60
    assert greedy["quota"]["max_memory_pages"] == 8
    assert modest["quota"]["max_tokens"] == 10
    assert inherits["quota"]["max_tokens"] == 70 and inherits["quota"]["max_memory_pages"] is None
    assert greedy["used"]["syscalls"] == 1 and greedy["left"]["max_syscalls"] == greedy["quota"]["max_syscalls"] - 1


def test_memory_pages_hook_kills_over_quota(tiny_backend):
    async def body(kernel, sh):
        box = kernel.session("box", Capabilities(quota=Quota(max_memory_pages=8)))
        within = kernel.enforce_quota(box, pages=8)
        over = kernel.enforce_quota(box, pages=9)
        return within, over, box.exit_code, box.exit_reason

    within, over, code, reason = run(tiny_backend, body)
    assert within and not over
    assert code == EXIT_QUOTA and reason == "quota exceeded: max_memory_pages 8 (wanted 9)"


def test_quota_max_tokens_a_prompt_alone_over_it_is_never_generated(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("talker"), "50", quota={"max_tokens": 5})
        status = await sh.proc.wait(pid)
        proc = kernel.procs.lookup(pid)
        return status, proc.generated_tokens

    status, generated = run(tiny_backend, body)
    assert status.exit_code == EXIT_QUOTA and status.reason.startswith("quota exceeded: max_tokens 5")
    assert generated == 0
