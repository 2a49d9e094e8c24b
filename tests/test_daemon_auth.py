"""The daemon's door: failed hellos are audited and rate-limited, connections that never say
hello hold no session slot and cannot keep a client with the token out, and what the daemon
keeps on disk is its user's alone (0700 folder, 0600 files)."""

from __future__ import annotations

import json
import os
import stat
import time

import trio
from daemon_util import RawClient, daemon_with, short_home

import llmos
from llmos.kernel.state.audit import AuditLog
from llmos.servers import daemon as daemon_module


def test_failed_hellos_are_audited_and_rate_limited(tiny_backend, tmp_path, monkeypatch):
    monkeypatch.setattr(daemon_module, "FAILED_HELLO_DELAY", 0.01)
    monkeypatch.setattr(daemon_module, "AUTH_BURST", 5)
    monkeypatch.setattr(daemon_module, "AUTH_REFILL", 0.5)

    async def main():
        async with daemon_with(tiny_backend) as d:
            d.kernel.audit = AuditLog(tmp_path / "audit.jsonl")
            replies = []
            for i in range(7):
                c = await RawClient.open(d.settings.socket_path)
                await c.frame({"id": 1, "op": "hello", "token": f"guess-{i}", "name": "guesser"})
                replies.append((await c.reply())["error"])
                await c.close()
            c = await RawClient.open(d.settings.socket_path)  # the right token, while the budget is spent
            await c.frame({"id": 1, "op": "hello", "token": d.token, "name": "me"})
            limited = (await c.reply())["error"]
            await trio.sleep(1.2)  # the budget refills
            ok = await (await RawClient.open(d.settings.socket_path)).hello(d.token)
            return replies, limited, ok, d.auth_failures

    replies, limited, ok, failures = trio.run(main)
    assert [r["errno"] for r in replies] == ["EPERM"] * 5 + ["EAGAIN"] * 2
    assert "too many failed hellos" in replies[-1]["message"]
    assert limited["errno"] == "EAGAIN" and ok["pid"] > 0 and failures == 5
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    hellos = [r for r in audit if r["syscall"] == "auth" and r["args"]["door"] == "socket"]
    assert [r["result"] for r in hellos] == ["EPERM"] * 5 + ["EAGAIN"] * 3
    assert all(r["args"]["peer_pid"] == os.getpid() and r["args"]["peer_uid"] == os.getuid() for r in hellos)
    assert all("token" not in r["args"] for r in hellos)  # what was guessed is not written down


def test_idle_connections_cannot_keep_a_client_out(tiny_backend):
    async def main():
        async with daemon_with(tiny_backend, max_pending=4, max_clients=8, hello_timeout=2.0) as d:
            idle = [await RawClient.open(d.settings.socket_path) for _ in range(20)]
            await trio.sleep(0.1)
            started = time.perf_counter()
            async with llmos.connect(d.settings.socket_path, d.token, name="me") as sys:
                me = await sys.proc.getpid()
            took = time.perf_counter() - started
            dropped = [await c.reply(timeout=5) for c in idle[-4:]]  # the newest idle ones: dropped at their deadline
            await trio.sleep(0.2)
            return me, took, d.evicted, dropped, len(d.pending), d.clients

    me, took, evicted, dropped, pending, clients = trio.run(main)
    assert me.name == "me" and took < 1.0
    assert evicted >= 16  # the oldest idle connections made room
    assert all(r is None or r["error"]["errno"] == "ETIMEDOUT" for r in dropped)
    assert pending == 0 and clients == 0


def test_data_dir_and_files_are_private(tiny_backend, monkeypatch):
    home = short_home()
    os.chmod(home, 0o755)
    (home / "old-notes.txt").write_text("from an older version")
    os.chmod(home / "old-notes.txt", 0o644)
    monkeypatch.setenv("LLMOS_HOME", str(home))

    async def main():
        async with daemon_with(tiny_backend, home=home) as d:
            async with llmos.connect(d.settings.socket_path, d.token) as sys:
                await sys.log("hello")  # the journal and the audit log get written
            d.kernel.commit()
            return sorted(p.name for p in home.iterdir())

    names = trio.run(main)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert {"daemon.token", "state.db", "audit.jsonl", "old-notes.txt"} <= set(names)
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
