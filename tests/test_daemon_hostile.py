"""Hostile agents against `llmos daemon` as an operator runs it (its own process, the real
model): the daemon keeps answering its socket and /health while they run, each ends with a
clear reason, none reaches the daemon's token or process, and SIGTERM still shuts it down."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import trio
from conftest import prog
from daemon_util import DaemonProcess, short_home

import llmos
from llmos.abi.proc import ProcState


def test_hostile_agents_against_a_daemon():
    home = short_home()
    root = short_home()
    daemon = DaemonProcess(home, "--no-persist", "--http", "127.0.0.1:0", "--max-session-processes", "40").start()
    health = json.loads((home / "daemon.json").read_text())["http"].removesuffix("/v1") + "/health"
    token_file = home / "daemon.token"

    async def main():
        async with llmos.connect(daemon.socket, daemon.token, name="operator", root=root) as op:
            async with llmos.connect(daemon.socket, daemon.token, name="attacker", root=root) as bad:
                busy = await bad.proc.spawn(prog("busy"))
                hostile = {
                    "hog": await bad.proc.spawn(prog("hog"), "4096", quota={"max_memory_mb": 256}),
                    "bomb": await bad.proc.spawn(prog("forkbomb"), "spawn", "6", "3", quota={"max_wall_time": 20}),
                    "os_fork": await bad.proc.spawn(prog("forkbomb"), "os"),
                    "segfault": await bad.proc.spawn(prog("segfault")),
                    "escape": await bad.proc.spawn(prog("escape"), f"kill:{daemon.proc.pid}", str(token_file)),
                }
                worst_call = worst_health = 0.0
                async with httpx.AsyncClient(timeout=5) as http:
                    for _ in range(40):
                        t = time.perf_counter()
                        await op.proc.getpid()
                        worst_call = max(worst_call, time.perf_counter() - t)
                        t = time.perf_counter()
                        (await http.get(health)).raise_for_status()
                        worst_health = max(worst_health, time.perf_counter() - t)
                        await trio.sleep(0.05)
                procs = await op.proc.ps()
                statuses = {name: await bad.proc.wait(pid) for name, pid in hostile.items()}
                busy_os_pid = next(p.os_pid for p in await op.proc.ps() if p.pid == busy)
                busy_state = next(p.state for p in await op.proc.ps() if p.pid == busy)
                reply = await op.llm.chat("Say hi.", max_tokens=4)
                return worst_call, worst_health, procs, statuses, busy_os_pid, busy_state, reply

    try:
        worst_call, worst_health, procs, statuses, busy_os_pid, busy_state, reply = trio.run(main)
        alive_after = daemon.proc.poll() is None
        code = daemon.signal(signal.SIGTERM, timeout=60)  # with the busy loop still running
    finally:
        daemon.stop()
    assert alive_after and code == 0
    assert worst_call < 2.0 and worst_health < 2.0  # (llmos bench isolation measures the p99)
    assert sum(1 for p in procs if p.state is not ProcState.ZOMBIE) <= 40 + 2  # the bomb's share, and the sessions
    assert statuses["hog"].exit_code == 1 and "MemoryError" in statuses["hog"].reason
    assert statuses["bomb"].exit_code in (0, 152)
    assert statuses["os_fork"].result == {"fork": "PermissionError", "errno": 1}
    assert statuses["segfault"].exit_code == 139 and "SIGSEGV" in statuses["segfault"].reason
    escape = statuses["escape"].result
    assert escape["signal kernel"] == "PermissionError" and escape[f"read {token_file}"] == "PermissionError"
    assert escape[f"fs.read {token_file}"] == "EPERM" and escape["kernel environ"] == "PermissionError"
    assert busy_state is ProcState.RUNNING and reply.usage.completion_tokens >= 1
    assert not os.path.exists(f"/proc/{busy_os_pid}")  # the shutdown took its worker too
