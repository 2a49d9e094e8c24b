"""Persistence: the journal restores the process table, logs and mailboxes after a restart,
clean or `kill -9`, with the semantics kernel/state/journal.py promises."""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

import trio
from daemon_util import DaemonProcess, daemon_with, short_home

import llmos
from llmos.abi.errors import Errno, SyscallError
from llmos.kernel.proc.process import ProcState

HERE = Path(__file__).parent / "agents_for_tests"


def prog(name: str) -> str:
    return str(HERE / f"{name}.py")


async def until(predicate, timeout: float = 30, every: float = 0.02):
    with trio.fail_after(timeout):
        while not (value := await predicate()):
            await trio.sleep(every)
        return value


def test_restart_restores_table_logs_and_pids(tiny_backend):
    home = short_home()

    async def first_life():
        async with daemon_with(tiny_backend, home=home) as d:
            async with llmos.connect(d.settings.socket_path, d.token) as sys:
                diary = await sys.proc.spawn(prog("diary"), "3", nice=5, allow=["log", "sleep"], quota={"max_syscalls": 500})
                talker = await sys.proc.spawn(prog("talker"), "3000")
                zombie = await sys.proc.spawn(prog("exiter"))
                reaped = await sys.proc.spawn(prog("diary"), "1")
                await until(lambda: _has_log(sys, diary, "entry 2"))
                await until(lambda: _state(sys, zombie, ProcState.ZOMBIE))
                await until(lambda: _has_log(sys, reaped, "entry 0"))
                await sys.proc.kill(reaped)
                await sys.proc.wait(reaped)
                await until(lambda: _generated(sys, talker, 1))
                await sys.call("proc.signal", pid=talker, signal="stop")
                return diary, talker, zombie, reaped, d.kernel.procs.next_pid

    async def second_life():
        async with daemon_with(tiny_backend, home=home) as d:
            k = d.kernel
            async with llmos.connect(d.settings.socket_path, d.token) as sys:
                procs = {p.pid: p for p in await sys.proc.ps()}
                logs = {pid: await sys.read_log(pid) for pid in (diary, reaped)}
                caps = k.caps[diary]
                fresh = await sys.proc.spawn(prog("diary"), "1")
                # cont re-executes the program from its spec; kill ends one that never ran.
                await sys.call("proc.signal", pid=diary, signal="cont")
                await until(lambda: _log_count(sys, diary, "entry 2", 2))
                await sys.proc.kill(talker)
                killed = k.procs.get(talker)
                await sys.proc.kill(diary)
                await sys.proc.kill(fresh)
                return d.restored, procs, logs, caps, fresh, killed.exit_code, killed.exit_reason

    diary, talker, zombie, reaped, next_pid = trio.run(first_life)
    restored, procs, logs, caps, fresh, kill_code, kill_reason = trio.run(second_life)
    assert sorted(restored.stopped) == [diary, talker] and restored.zombies == [zombie] and restored.reaped >= 1
    assert procs[diary].state is ProcState.STOPPED and procs[talker].state is ProcState.STOPPED
    assert procs[diary].nice == 5 and procs[diary].ppid == 0  # its parent session is gone
    assert procs[talker].generated_tokens > 0  # counters survive
    assert procs[zombie].state is ProcState.ZOMBIE and procs[zombie].exit_code == 3
    assert reaped not in procs
    assert [line.split(maxsplit=2)[2] for line in logs[diary][:3]] == ["entry 0", "entry 1", "entry 2"]
    assert "restored after a restart" in logs[diary][-1]
    assert any("entry 0" in line for line in logs[reaped])  # a reaped record's log stays readable
    assert caps.allows("log") and not caps.allows("llm.chat")  # capabilities come back as they were
    assert caps.quota.max_syscalls == 500
    assert fresh >= next_pid  # pids are never reused
    assert (kill_code, kill_reason) == (137, "killed")


def test_resume_setting_restarts_restored_processes(tiny_backend):
    home = short_home()

    async def life(resume: bool):
        async with daemon_with(tiny_backend, home=home, resume=resume) as d:
            async with llmos.connect(d.settings.socket_path, d.token) as sys:
                if not resume:
                    pid = await sys.proc.spawn(prog("diary"), "1")
                    await until(lambda: _has_log(sys, pid, "entry 0"))
                    return pid
                pid = d.restored.stopped[0]
                await until(lambda: _log_count(sys, pid, "entry 0", 2))
                await until(lambda: _state(sys, pid, ProcState.SLEEPING))  # its program's next step after the log
                return (await sys.proc.ps(), pid)

    pid = trio.run(life, False)
    procs, again = trio.run(life, True)
    assert again == pid
    assert {p.pid: p.state for p in procs}[pid] is ProcState.SLEEPING  # running its program again


def test_waiting_messages_survive_a_restart(tiny_backend):
    home = short_home()

    async def first_life():
        async with daemon_with(tiny_backend, home=home) as d:
            async with llmos.connect(d.settings.socket_path, d.token) as sys:
                waiting = await sys.proc.spawn(prog("diary"), "1")
                eater = await sys.proc.spawn(prog("receiver"), "1")
                await sys.ipc.send(eater, "eaten")  # taken before the restart: not restored
                await sys.ipc.send(waiting, {"n": 1}, tag="a")
                await sys.ipc.send(waiting, "two")
                await until(lambda: _state(sys, eater, ProcState.ZOMBIE))
                return waiting, eater, sys.pid

    async def second_life():
        async with daemon_with(tiny_backend, home=home) as d:
            boxes = d.kernel.mailboxes
            restored = [(m.sender, m.tag, m.body) for m in boxes.box(waiting).messages]
            return d.restored.messages, restored, boxes.pending(eater)

    waiting, eater, sender = trio.run(first_life)
    count, restored, eaten = trio.run(second_life)
    assert count == 2 and restored == [(sender, "a", {"n": 1}), (sender, None, "two")]
    assert eaten == 0


def test_sigkill_loses_nothing_acknowledged():
    """A real daemon, the real model, a real `kill -9`."""
    home = short_home()
    daemon = DaemonProcess(home, "--no-http").start()

    async def before_kill():
        async with llmos.connect(daemon.socket, daemon.token) as sys:
            diary = await sys.proc.spawn(prog("diary"), "4", name="diary")
            talker = await sys.proc.spawn(prog("talker"), "3000", nice=3)
            zombie = await sys.proc.spawn(prog("exiter"))
            collector = await sys.proc.spawn(prog("collector"))
            for body in ("a", "b"):  # acknowledged, waiting (the collector wants "start" first)
                await sys.ipc.send(collector, body)
            await until(lambda: _has_log(sys, diary, "entry 3"), timeout=60)
            await until(lambda: _state(sys, zombie, ProcState.ZOMBIE), timeout=60)
            await until(lambda: _generated(sys, talker, 1), timeout=120)
            acknowledged = await sys.read_log(diary)
            # Killed while this session is connected: its zombie child is not reaped.
            killed = daemon.signal(signal.SIGKILL)
            return diary, talker, zombie, collector, acknowledged, killed

    try:
        diary, talker, zombie, collector, acknowledged, killed = trio.run(before_kill)
        assert killed == -signal.SIGKILL
        assert (home / "daemon.sock").exists() and (home / "daemon.json").exists()  # left behind by the kill
        daemon = DaemonProcess(home, "--no-http").start()
        out = daemon.wait_output("removed stale")
        assert "removed stale" in out and "not running" in out  # and cleared at start

        async def after_restart():
            async with llmos.connect(daemon.socket, daemon.token) as sys:
                procs = {p.pid: p for p in await sys.proc.ps()}
                log = await sys.read_log(diary)
                with_result = None
                try:
                    await sys.proc.wait(zombie)
                except SyscallError as exc:
                    with_result = exc.errno  # the session that could reap it is gone: ECHILD
                # The collector runs again from the start and finds its messages still waiting.
                await sys.proc.signal(collector, "cont")
                await sys.ipc.send(collector, "start", tag="start")
                await until(lambda: _state(sys, collector, ProcState.ZOMBIE), timeout=60)
                inbox = await sys.read_log(collector)
                return procs, log, with_result, inbox

        procs, log, wait_errno, inbox = trio.run(after_restart)
        assert procs[diary].state is ProcState.STOPPED and procs[diary].name == "diary"
        assert procs[talker].state is ProcState.STOPPED and procs[talker].nice == 3
        assert procs[zombie].state is ProcState.ZOMBIE and procs[zombie].exit_code == 3
        assert wait_errno is Errno.ECHILD
        assert log[: len(acknowledged)] == acknowledged  # every acknowledged line, in order
        assert "restored after a restart" in log[-1]
        assert any("inbox: ['start', 'a', 'b']" in line for line in inbox)  # no acknowledged message lost
        shell = _shell(daemon, f"ps -a\nlogs {diary}\ncont {diary}\nstop {talker}\ntop -n 1\nmem {diary}\n"
                               f"attach {diary}\nhello there\n/detach\nkill {talker}\nhistory\n")
        assert "STOPPED" in shell and "entry 3" in shell and f"continued {diary}" in shell
        assert f"pid {diary} has no memory pages" in shell and "TOK/S" in shell and "KV MB" in shell
        assert f"attached to {diary}" in shell and f"sent to {diary}'s mailbox" in shell and f"killed {talker}" in shell
        assert re.search(rf"^\s+\d+\s+attach {diary}$", shell, re.M)  # `history` lists what was typed
        assert daemon.signal(signal.SIGTERM) == 0  # graceful: checkpoint, exit 0
        assert "checkpointing" in daemon.output()
        assert not (home / "daemon.sock").exists()
        db = sqlite3.connect(home / "state.db")
        rows = dict(db.execute("SELECT pid, state FROM procs WHERE reaped = 0").fetchall())
        assert rows[diary] != "ZOMBIE" and rows[talker] == "ZOMBIE"  # alive at shutdown stays alive
    finally:
        daemon.stop()


def _shell(daemon: DaemonProcess, script: str) -> str:
    import os
    import subprocess
    import sys

    env = dict(os.environ, LLMOS_HOME=str(daemon.home))
    r = subprocess.run([sys.executable, "-m", "llmos", "shell"], input=script, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert f"connected to the llmos daemon pid {daemon.proc.pid}" in r.stderr  # it says where it is
    return r.stdout


async def _has_log(sys, pid: int, text: str) -> bool:
    return any(text in line for line in await sys.read_log(pid))


async def _log_count(sys, pid: int, text: str, n: int) -> bool:
    return sum(text in line for line in await sys.read_log(pid)) >= n


async def _state(sys, pid: int, state: ProcState) -> bool:
    return any(p.pid == pid and p.state is state for p in await sys.proc.ps())


async def _generated(sys, pid: int, n: int) -> bool:
    return any(p.pid == pid and p.generated_tokens >= n for p in await sys.proc.ps())


def test_a_failing_journal_is_reported_and_caught_up(tiny_backend):
    """A commit that fails (disk full, read-only) does not stop the kernel: kernel.stat says
    so, and the next successful commit writes everything that was missed."""
    home = short_home()

    async def main():
        async with daemon_with(tiny_backend, home=home) as d:
            async with llmos.connect(d.settings.socket_path, d.token) as sys:
                d.journal.db.execute("PRAGMA query_only=1")  # every write now fails
                pid = await sys.proc.spawn(prog("exiter"))
                await until(lambda: _state(sys, pid, ProcState.ZOMBIE))
                failed = await sys.call("kernel.stat")
                d.journal.db.execute("PRAGMA query_only=0")
                await sys.proc.getpid()  # any syscall commits
                rows = d.journal.db.execute("SELECT pid FROM procs WHERE pid = ?", (pid,)).fetchall()
                return failed, rows, pid

    failed, rows, pid = trio.run(main)
    assert failed.journal_failures >= 1 and "readonly" in failed.journal_error
    assert rows == [(pid,)]
