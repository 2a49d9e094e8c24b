"""Processes and syscalls on the tiny model: containment, kill, typed errors, capabilities."""

from __future__ import annotations

import os

import pytest
import trio
from conftest import errno_of, kernel_with, prog, run

from llmos.abi.errors import Errno, SyscallError
from llmos.kernel.proc.process import ProcState
from llmos.runtime import session


def test_agent_exception_is_contained(tiny_backend):
    async def body(kernel, sh):
        bad = await sh.proc.spawn(prog("crasher"), "x")
        good = await sh.proc.spawn(prog("talker"), "5")
        first = await sh.proc.wait(bad)
        second = await sh.proc.wait(good)
        return first, second

    first, second = run(tiny_backend, body)
    assert first.exit_code == 1
    assert "RuntimeError: boom: x" in first.reason and "Traceback" in first.reason
    assert second.exit_code == 0 and isinstance(second.result, str)


def test_kill_mid_generation_frees_slot_and_kv(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("talker"), "3000")
        proc = kernel.procs.get(pid)
        while proc.generated_tokens < 5:
            await trio.sleep(0.01)
        assert proc.state in (ProcState.RUNNING, ProcState.READY) and proc.kv is not None
        assert len(kernel.scheduler.running) == 1
        await sh.proc.kill(pid)
        status = await sh.proc.wait(pid)
        return kernel, proc, status

    kernel, proc, status = run(tiny_backend, body)
    assert status.exit_code == 137 and status.reason == "killed"
    assert proc.kv is None and proc.state is ProcState.ZOMBIE
    assert len(kernel.scheduler) == 0
    assert proc.generated_tokens < 3000


def test_validation_errors_name_the_field(tiny_backend):
    async def body(kernel, sh):
        with pytest.raises(SyscallError) as bad_tokens:
            await sh.call("llm.chat", messages=[{"role": "user", "content": "hi"}], max_tokens="lots")
        with pytest.raises(SyscallError) as missing:
            await sh.call("llm.chat")
        with pytest.raises(SyscallError) as bad_role:
            await sh.call("llm.chat", messages=[{"role": "wizard", "content": "hi"}])
        with pytest.raises(SyscallError) as extra:
            await sh.call("sleep", seconds=0, forever=True)
        return bad_tokens.value, missing.value, bad_role.value, extra.value

    bad_tokens, missing, bad_role, extra = run(tiny_backend, body)
    for err in (bad_tokens, missing, bad_role, extra):
        assert err.errno is Errno.EINVAL
    assert "max_tokens" in bad_tokens.message
    assert "messages" in missing.message
    assert "messages.0.role" in bad_role.message
    assert "forever" in extra.message


def test_typed_errors(tiny_backend):
    async def body(kernel, sh):
        return {
            "unknown": await errno_of(sh.call("no.such.call")),
            "kill_missing": await errno_of(sh.proc.kill(999)),
            "wait_no_children": await errno_of(sh.proc.wait()),
            "missing_program": await errno_of(sh.proc.spawn("/nope/agent.py")),
            "no_entry": await errno_of(sh.proc.spawn(prog("sync_main"))),
            "wait_timeout": await errno_of(_wait_timeout(sh)),
        }

    codes = run(tiny_backend, body)
    assert codes == {
        "unknown": Errno.ENOSYS,
        "kill_missing": Errno.ESRCH,
        "wait_no_children": Errno.ECHILD,
        "missing_program": Errno.ENOENT,
        "no_entry": Errno.ENOEXEC,
        "wait_timeout": Errno.ETIMEDOUT,
    }


async def _wait_timeout(sh):
    pid = await sh.proc.spawn(prog("talker"), "3000")
    try:
        await sh.proc.wait(pid, timeout=0.2)
    finally:
        await sh.proc.kill(pid)


def test_capabilities_deny_and_never_exceed_parent(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("denied"), allow=["log", "proc.*"])
        status = await sh.proc.wait(pid)
        caps = kernel.caps
        # A grandchild asking for everything still gets only what its parent had.
        child = kernel.spawn(kernel.procs.get(1), prog("denied"), caps=caps[1].narrowed(["log"]))
        grandchild_caps = caps[child.pid].narrowed(["*"])
        await sh.proc.wait(child.pid)
        return status, grandchild_caps

    status, grandchild_caps = run(tiny_backend, body)
    assert status.result == "EPERM"
    assert grandchild_caps.allows("log") and not grandchild_caps.allows("llm.chat")


def test_children_cannot_act_on_others(tiny_backend):
    async def body(kernel, sh):
        victim = await sh.proc.spawn(prog("talker"), "3000")
        attacker = kernel.spawn(kernel.procs.get(1), prog("talker"), ["1"])
        from llmos.runtime import local_handle

        handle = local_handle(kernel, attacker)
        code = await errno_of(handle.proc.kill(victim))
        await sh.proc.kill(victim)
        await sh.proc.kill(attacker.pid)
        return code

    assert run(tiny_backend, body) is Errno.EPERM


def test_exit_code_and_result_reach_parent(tiny_backend):
    async def body(kernel, sh):
        return await sh.proc.wait(await sh.proc.spawn(prog("exiter")))

    status = run(tiny_backend, body)
    assert status.exit_code == 3 and status.result == {"answer": 42}


def test_states_sleep_and_wait(tiny_backend):
    async def body(kernel, sh):
        states = {}

        async def sleeper():
            await sh.sleep(0.3)

        async with trio.open_nursery() as n:
            n.start_soon(sleeper)
            await trio.sleep(0.1)
            states["sleep"] = kernel.procs.get(1).state
        pid = await sh.proc.spawn(prog("talker"), "3000")
        async with trio.open_nursery() as n:
            n.start_soon(sh.proc.wait, pid)
            await trio.sleep(0.1)
            states["wait"] = (kernel.procs.get(1).state, kernel.procs.get(1).wchan)
            await sh.proc.kill(pid)
        return states

    states = run(tiny_backend, body)
    assert states["sleep"] is ProcState.SLEEPING
    assert states["wait"] == (ProcState.BLOCKED, "proc.wait")


def test_killed_process_gets_ekilled(tiny_backend):
    async def body(kernel, sh):
        victim = session(kernel, "victim")
        kernel.kill(kernel.procs.get(victim.pid))
        return await errno_of(victim.log("still here?"))

    assert run(tiny_backend, body) in (Errno.EKILLED, Errno.ESRCH)


def test_fs_sandbox_denies_escapes(tiny_backend, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")

    async def body(kernel, sh):
        from llmos.kernel.proc.capabilities import Capabilities
        from llmos.runtime import local_handle

        box = local_handle(kernel, kernel.session("box", Capabilities(fs_root=root)))
        return {
            "inside": await box.fs.read("inside.txt"),
            "dotdot": await errno_of(box.fs.read("../secret.txt")),
            "absolute": await errno_of(box.fs.read(str(tmp_path / "secret.txt"))),
            "symlink": await errno_of(box.fs.read("link.txt")),
            "write_escape": await errno_of(box.fs.write("../evil.txt", "x")),
            "written": await box.fs.write("sub/new.txt", "data"),
            "listed": [e.name for e in await box.fs.list(".")],
            "root_escape": await errno_of(box.proc.spawn(prog("talker"), root="..")),
        }

    r = run(tiny_backend, body)
    assert r["inside"] == "hello"
    assert r["dotdot"] is r["absolute"] is r["symlink"] is r["write_escape"] is Errno.EPERM
    assert r["written"] == 4 and (root / "sub" / "new.txt").read_text() == "data"
    assert "inside.txt" in r["listed"] and not (tmp_path / "evil.txt").exists()
    assert r["root_escape"] is Errno.EPERM


def test_busy_process_cannot_chat_twice(tiny_backend):
    async def body(kernel, sh):
        async with trio.open_nursery() as n:
            n.start_soon(lambda: sh.llm.chat("long", max_tokens=200))
            await trio.sleep(0.05)
            code = await errno_of(sh.llm.chat("again", max_tokens=2))
            n.cancel_scope.cancel()
        return code

    assert run(tiny_backend, body) is Errno.EBUSY


def test_orphan_zombies_are_bounded(tiny_backend, monkeypatch):
    from llmos.kernel import kernel as kernel_module

    monkeypatch.setattr(kernel_module, "ORPHAN_ZOMBIES_KEPT", 2)

    async def body(kernel, sh):
        from llmos.runtime import session as new_session

        parent = new_session(kernel, "parent")
        pids = [await parent.proc.spawn(prog("talker"), "2") for _ in range(4)]
        kernel.end_session(kernel.procs.get(parent.pid))  # the parent goes away first
        for pid in pids:
            await kernel.procs.lookup(pid).exited.wait()
        return [kernel.procs.get(p) is not None for p in pids], [kernel.procs.lookup(p).exit_code for p in pids]

    in_table, codes = run(tiny_backend, body)
    assert sum(in_table) == 2 and codes == [0, 0, 0, 0]  # the two oldest were reaped, all readable


def test_a_failing_forward_pass_fails_its_requests_not_the_kernel(tiny_backend):
    from llmos.abi.errors import Errno, SyscallError

    real_run = tiny_backend.run
    calls = {"n": 0}

    def flaky(plan):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("out of memory in this step")
        return real_run(plan)

    async def main():
        async with kernel_with(tiny_backend) as kernel:
            sh = session(kernel, "flaky")
            tiny_backend.run = flaky
            try:
                with pytest.raises(SyscallError) as info:
                    await sh.llm.chat("hello there", max_tokens=8)
                again = await sh.llm.chat("hello there", max_tokens=4, ignore_eos=True)
            finally:
                tiny_backend.run = real_run
            stat = await sh.call("kernel.stat")
            return info.value, again, stat

    err, again, stat = trio.run(main)
    assert err.errno is Errno.EIO and "out of memory in this step" in str(err)
    assert again.usage.completion_tokens == 4 and stat.failed_steps == 1
