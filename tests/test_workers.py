"""Agent workers: every program in its own OS process, confined by the OS, and hostile ones
contained with a clear exit reason while the kernel stays responsive.

The hostile programs are in tests/agents_for_tests (busy, hog, forkbomb, race, escape,
impersonate, segfault, hard_exit); each is bounded in time and size."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import trio
from conftest import prog, run

from llmos.abi.errors import Errno
from llmos.abi.proc import ProcState
from llmos.config import data_dir
from llmos.kernel.proc.capabilities import Capabilities
from llmos.runtime import local_handle

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="workers need Linux pidfds")


def os_state(pid: int) -> str | None:
    """The OS's state letter for `pid` (R, S, T, Z...), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


async def started(kernel, pid: int, timeout: float = 60) -> int:
    """The OS pid of process `pid`'s worker, once it runs."""
    with trio.fail_after(timeout):
        while kernel.procs.get(pid).os_pid is None:
            await trio.sleep(0.01)
    return kernel.procs.get(pid).os_pid


async def responsive(sh, calls: int = 20) -> float:
    """The slowest of `calls` syscalls from a session, in seconds."""
    worst = 0.0
    for _ in range(calls):
        t = time.perf_counter()
        await sh.proc.getpid()
        worst = max(worst, time.perf_counter() - t)
        await trio.sleep(0.01)
    return worst


def test_a_worker_is_its_own_confined_process(tiny_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_TOKEN", "secret-token-value")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")

    async def body(kernel, sh):
        box = local_handle(kernel, kernel.session("box", Capabilities(fs_root=tmp_path)))
        pid = await box.proc.spawn(prog("whoami"))
        status = await box.proc.wait(pid)
        return status, kernel.procs.lookup(pid), await sh.stat()

    status, proc, stat = run(tiny_backend, body)
    assert status.exit_code == 0, status.reason
    me = status.result
    assert me["pid"] != os.getpid() and me["ppid"] != os.getpid()  # forked by the template, not the kernel
    assert me["llmos_pid"] == status.pid and proc.os_pid is None  # (cleared once reaped)
    assert os_state(me["pid"]) is None  # reaped
    assert me["cwd"] == str(tmp_path)
    assert "LLMOS_TOKEN" not in me["env"] and "OPENAI_API_KEY" not in me["env"]
    assert me["env"]["HOME"] == str(tmp_path) and me["env"]["LLMOS_PID"] == str(status.pid)
    fds = {int(fd): target for fd, target in me["open_fds"].items() if target is not None}
    assert fds[3].startswith("socket:")  # its channel
    others = {fd: t for fd, t in fds.items() if fd > 3}
    assert all(t.startswith(("anon_inode:", "socket:", "pipe:")) for t in others.values()), others  # trio's own
    assert not [t for fd, t in fds.items() if t.startswith("/") and fd > 2]  # no file of the kernel's
    assert me["modules_heavy"] == []  # no torch, no kernel in a worker
    assert me["status"]["NoNewPrivs"] == "1" and int(me["status"]["CapEff"], 16) == 0
    assert me["status"]["Seccomp"] == "2"
    assert stat.isolation == "workers" and "landlock" in stat.sandbox


def test_busy_loop_is_contained_and_killed_with_sigkill(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("busy"))
        os_pid = await started(kernel, pid)
        await trio.sleep(0.5)
        running = os_state(os_pid)
        worst = await responsive(sh)
        await sh.proc.kill(pid)
        status = await sh.proc.wait(pid)
        return running, worst, status, os_state(os_pid)

    running, worst, status, after = run(tiny_backend, body)
    assert running == "R"
    assert worst < 0.5  # the kernel's loop never runs agent code (the benchmark measures p99)
    assert (status.exit_code, status.reason) == (137, "killed")
    assert after is None


def test_cpu_time_limit_ends_a_busy_loop(tiny_backend):
    async def body(kernel, sh):
        return await sh.proc.wait(await sh.proc.spawn(prog("busy"), quota={"max_cpu_time": 1}))

    status = run(tiny_backend, body)
    assert status.exit_code == 128 + signal.SIGXCPU and "SIGXCPU" in status.reason


def test_wall_time_kills_the_worker(tiny_backend):
    async def body(kernel, sh):
        await kernel.runner.warm()  # (wall time counts from the spawn: the template's start too)
        pid = await sh.proc.spawn(prog("busy"), quota={"max_wall_time": 2})
        os_pid = await started(kernel, pid)
        return await sh.proc.wait(pid), os_pid

    status, os_pid = run(tiny_backend, body)
    assert status.exit_code == 152 and "max_wall_time" in status.reason
    assert os_state(os_pid) is None


def test_memory_hog_fails_at_its_limit_not_the_kernel(tiny_backend):
    import psutil

    kernel_rss = psutil.Process().memory_info().rss

    async def body(kernel, sh):
        return await sh.proc.wait(await sh.proc.spawn(prog("hog"), "4096", quota={"max_memory_mb": 256}))

    status = run(tiny_backend, body)
    assert status.exit_code == 1 and "MemoryError" in status.reason
    assert psutil.Process().memory_info().rss - kernel_rss < 200 * 2**20  # it grew elsewhere


def test_fork_bomb_by_spawn_fills_only_its_session_share(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("forkbomb"), "spawn", "6", "3", quota={"max_wall_time": 60})
        with trio.fail_after(60):
            while sum(1 for p in kernel.procs if p.alive and p.session_pid == sh.pid) < 12:
                await trio.sleep(0.05)
        await trio.sleep(1.0)  # the refused ones have been refused
        alive = sum(1 for p in kernel.procs if p.alive and p.session_pid == sh.pid)
        worst = await responsive(sh)
        other = local_handle(kernel, kernel.session("another client"))
        other_pid = await other.proc.spawn(prog("exiter"))  # the table still has room for others
        other_status = await other.proc.wait(other_pid)
        for p in [p for p in kernel.procs if p.alive and p.session_pid == sh.pid]:
            kernel.kill(p)
        await sh.proc.wait(pid)
        return alive, worst, other_status

    alive, worst, other_status = run(tiny_backend, body, max_session_processes=12, max_children=3)
    assert alive == 12
    assert worst < 0.5
    assert other_status.exit_code == 3


def test_os_fork_is_refused(tiny_backend):
    async def body(kernel, sh):
        return await sh.proc.wait(await sh.proc.spawn(prog("forkbomb"), "os"))

    status = run(tiny_backend, body)
    assert status.exit_code == 0 and status.result == {"fork": "PermissionError", "errno": 1}


def test_segfault_becomes_a_zombie_with_its_signal(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("segfault"))
        status = await sh.proc.wait(pid)
        return status, await sh.read_log(pid), await sh.proc.getpid()

    status, log, _ = run(tiny_backend, body)
    assert status.exit_code == 128 + signal.SIGSEGV
    assert status.reason == "worker killed by SIGSEGV (segmentation fault)"
    assert any("about to read address 0" in line for line in log)


def test_os_exit_is_reported_by_its_status(tiny_backend):
    async def body(kernel, sh):
        return await sh.proc.wait(await sh.proc.spawn(prog("hard_exit"), "7"))

    status = run(tiny_backend, body)
    assert status.exit_code == 7 and "without reporting" in status.reason


def test_stop_and_cont_are_real_signals(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("busy"))
        os_pid = await started(kernel, pid)
        await sh.proc.signal(pid, "stop")
        await trio.sleep(0.2)
        stopped = (kernel.procs.get(pid).state, os_state(os_pid))
        await sh.proc.signal(pid, "cont")
        await trio.sleep(0.2)
        continued = (kernel.procs.get(pid).state, os_state(os_pid))
        await sh.proc.signal(pid, "stop")
        await sh.proc.kill(pid)  # a stopped worker dies too
        return stopped, continued, await sh.proc.wait(pid), os_state(os_pid)

    stopped, continued, status, after = run(tiny_backend, body)
    assert stopped == (ProcState.STOPPED, "T")
    assert continued == (ProcState.RUNNING, "R")
    assert status.exit_code == 137 and after is None


def test_symlink_race_leaks_nothing(tiny_backend, tmp_path):
    """The race of the issue: a folder and a symlink to /etc swapped while fs.read reads through
    them; and the same for fs.write with a folder outside the root as the symlink's target."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("outside, must stay unchanged")
    roots = [tmp_path / "read-root", tmp_path / "write-root"]
    for r in roots:
        r.mkdir()

    async def body(kernel, sh):
        statuses = []
        for root, target in zip(roots, ["/etc", str(outside)]):
            box = local_handle(kernel, kernel.session("box", Capabilities(fs_root=root)))
            statuses.append(await box.proc.wait(await box.proc.spawn(prog("race"), "3", target)))
        return statuses

    for status in run(tiny_backend, body):
        assert status.exit_code == 0, status.reason
        counts = status.result
        assert counts["leaked_reads"] == 0, counts
        assert counts["swaps"] > 100 and counts["safe_reads"] > 0 and counts["refused"], counts  # the race ran
    assert (outside / "passwd").read_text() == "outside, must stay unchanged"


def test_direct_access_outside_the_root_is_refused(tiny_backend, tmp_path):
    secret = data_dir() / "daemon.token"
    secret.write_text("the-token\n")
    box_root = tmp_path / "box"
    box_root.mkdir()

    async def body(kernel, sh):
        box = local_handle(kernel, kernel.session("box", Capabilities(fs_root=box_root)))
        return await box.proc.wait(await box.proc.spawn(prog("escape"), str(os.getpid()), str(secret)))

    status = run(tiny_backend, body)
    assert status.exit_code == 0, status.reason
    out = status.result
    assert out.pop(f"fs.read {secret}") == "EPERM"
    leaks = {k: v for k, v in out.items() if v == "OK"}
    assert not leaks, leaks
    assert out["read /etc/passwd"] == "PermissionError" and out[f"read {secret}"] == "PermissionError"
    assert out["signal kernel"] == "PermissionError" and out["signal template"] == "PermissionError"
    assert not any(p.name.startswith("llmos-escape") for p in Path("/tmp").iterdir())


def test_pid_impersonation_gets_nothing(tiny_backend, tmp_path):
    async def body(kernel, sh):
        from llmos.kernel.state.audit import AuditLog

        kernel.audit = AuditLog(tmp_path / "audit.jsonl")  # this kernel's calls only (pids restart per kernel)
        parent = local_handle(kernel, kernel.session("parent", Capabilities(fs_root=tmp_path)))
        victim = await parent.proc.spawn(prog("sleeper"), "30")
        attacker = await parent.proc.spawn(prog("impersonate"), str(victim), allow=["log", "proc.*"])
        status = await parent.proc.wait(attacker)
        victim_alive = kernel.procs.get(victim).alive and not kernel.procs.get(victim).stopped
        await parent.proc.kill(victim)
        audit = [json.loads(line) for line in kernel.audit.path.read_text().splitlines()]
        return status, victim, victim_alive, parent.pid, audit

    status, victim, victim_alive, parent_pid, audit = run(tiny_backend, body)
    assert status.exit_code == 0, status.reason
    out = status.result
    assert {k: v for k, v in out.items() if v == "OK"} == {"still allowed after all that": "OK"}
    assert out["own fs.list"] == out["handle pid set to victim"] == "EPERM"
    assert out["frame with a pid field"] == out["args with a pid"] == out["hello on the channel"] == "EINVAL"
    assert out["kill the victim"] == out["stop the victim"] == out["nice the victim"] == "EPERM"
    assert out["other fds answering"] == []
    assert victim_alive
    # Every call the attacker made is on its own record: none under the victim's or the parent's.
    assert not [r for r in audit if r["pid"] in (victim, parent_pid) and r["syscall"] == "fs.list" and r["result"] == "OK"]
    assert [r for r in audit if r["pid"] == status.pid and r["syscall"] == "fs.list" and r["result"] == "EPERM"]


def test_the_template_dying_fails_its_workers_and_comes_back(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("sleeper"), "30")
        await started(kernel, pid)
        template = kernel.runner.template
        template.process.send_signal(signal.SIGKILL)
        status = await sh.proc.wait(pid)
        again = await sh.proc.wait(await sh.proc.spawn(prog("exiter")))
        return status, again, template.starts

    status, again, starts = run(tiny_backend, body)
    assert status.exit_code == 137 and "template died" in status.reason
    assert again.exit_code == 3 and starts == 2


def test_a_worker_exception_and_result_travel_back(tiny_backend):
    async def body(kernel, sh):
        bad = await sh.proc.wait(await sh.proc.spawn(prog("crasher"), "x"))
        good = await sh.proc.wait(await sh.proc.spawn(prog("exiter")))
        return bad, good

    bad, good = run(tiny_backend, body)
    assert bad.exit_code == 1 and "RuntimeError: boom: x" in bad.reason and "Traceback" in bad.reason
    assert good.exit_code == 3 and good.result == {"answer": 42}


def test_inprocess_trusted_is_an_explicit_opt_in(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("whoami"))
        return await sh.proc.wait(pid), await sh.stat()

    status, stat = run(tiny_backend, body, isolation="inprocess-trusted")
    assert status.result["pid"] == os.getpid()  # the kernel's own process: no isolation at all
    assert stat.isolation == "inprocess-trusted"


def test_spawn_still_refuses_bad_programs_without_running_them(tiny_backend, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "sync.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef main(sys, args):\n    return 1\n")
    (tmp_path / "broken.py").write_text("async def main(sys, args)\n")

    async def body(kernel, sh):
        return (
            await _errno(sh.proc.spawn(str(tmp_path / "sync.py"))),
            await _errno(sh.proc.spawn(str(tmp_path / "broken.py"))),
            await _errno(sh.proc.spawn("no_such_module_anywhere")),
        )

    assert run(tiny_backend, body) == (Errno.ENOEXEC, Errno.ENOEXEC, Errno.ENOENT)
    assert not marker.exists()  # the kernel read it; it never ran it


async def _errno(coro):
    from conftest import errno_of

    return await errno_of(coro)


def test_the_shell_refuses_to_kill_or_stop_itself(tiny_backend):
    import io

    from rich.console import Console

    from llmos.shell.shell import Shell

    async def body(kernel, sh):
        out = io.StringIO()
        shell = Shell(sh, Console(file=out, width=200))
        await shell.execute(f"kill {sh.pid}")
        await shell.execute(f"stop {sh.pid}")
        await shell.execute("ps")  # and it goes on working
        return out.getvalue(), kernel.procs.get(sh.pid)

    text, me = run(tiny_backend, body)
    assert text.count("this shell's own session") == 2 and "use quit" in text
    assert me.alive and not me.stopped and "RUNNING" in text


def test_killed_while_being_forked_leaves_nothing_behind(tiny_backend):
    async def body(kernel, sh):
        await kernel.runner.warm()
        victims = [kernel.spawn(kernel.procs.get(sh.pid), prog("sleeper"), ["30"]) for _ in range(6)]
        await trio.sleep(0)
        for victim in victims:
            kernel.kill(victim)  # mid-fork, some of them
        statuses = [await sh.proc.wait(v.pid) for v in victims]
        after = await sh.proc.wait(await sh.proc.spawn(prog("exiter")))  # its reply is its own
        return statuses, after, dict(kernel.runner.workers), len(kernel.runner.template.workers)

    statuses, after, workers, template_workers = run(tiny_backend, body)
    assert all(s.exit_code == 137 for s in statuses)
    assert after.exit_code == 3 and after.result == {"answer": 42}
    assert workers == {} and template_workers == 0


def test_a_process_spawns_only_programs_it_could_read(tiny_backend, tmp_path):
    box_root, elsewhere = tmp_path / "box", tmp_path / "elsewhere"
    box_root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "x.py").write_text("async def main(sys, args):\n    return 1\n")
    (box_root / "mine.py").write_text("async def main(sys, args):\n    return 2\n")
    outside, inside = str(elsewhere / "x.py"), str(box_root / "mine.py")

    async def body(kernel, sh):
        box = local_handle(kernel, kernel.session("box", Capabilities(fs_root=box_root)))
        status = await box.proc.wait(await box.proc.spawn(prog("spawner"), outside, inside, prog("exiter"), "answer"))
        return status.result

    result = run(tiny_backend, body)
    # Outside its root: refused (else its worker could read that folder); its own folder, its
    # root and the bundled examples are fine.
    assert result == {outside: "EPERM", inside: "OK", prog("exiter"): "OK", "answer": "OK"}


def test_a_root_that_holds_the_data_dir_keeps_it_out(tiny_backend, tmp_path, monkeypatch):
    """A root such as $HOME holds the kernel's data directory: the worker may use the rest of
    the root, directly and through fs.*, but not the token, the journal or the audit log."""
    home = tmp_path / ".local" / "llmos"
    home.mkdir(parents=True)
    (home / "daemon.token").write_text("the-token\n")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".local" / "other.txt").write_text("also mine")
    monkeypatch.setenv("LLMOS_HOME", str(home))
    files = [str(tmp_path / "notes.txt"), str(tmp_path / ".local" / "other.txt"), str(home / "daemon.token")]

    async def body(kernel, sh):
        box = local_handle(kernel, kernel.session("box", Capabilities(fs_root=tmp_path)))
        return await box.proc.wait(await box.proc.spawn(prog("escape"), str(os.getpid()), *files))

    status = run(tiny_backend, body)
    out = status.result
    notes, other, token = files
    assert out[f"read {notes}"] == out[f"read {other}"] == out[f"fs.read {notes}"] == out[f"fs.read {other}"] == "OK"
    assert out[f"read {token}"] == "PermissionError" and out[f"fs.read {token}"] == "EPERM"
