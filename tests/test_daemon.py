"""The daemon's socket and the remote SDK, on the tiny model: the same syscalls, answers and
errors as in-process; auth, limits, cancellation and clients that vanish."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio
from daemon_util import RawClient, daemon_with, short_home

import llmos
from llmos.abi import ProcessExit
from llmos.abi.errors import Errno, SyscallError
from llmos.abi.llm import ChatResponse
from llmos.abi.proc import WaitResponse
from llmos.kernel.proc.process import ProcState
from llmos.runtime import session
from llmos.shell.run import run_remote

HERE = Path(__file__).parent / "agents_for_tests"


def prog(name: str) -> str:
    return str(HERE / f"{name}.py")


async def errno_of(coro) -> Errno:
    with pytest.raises(SyscallError) as info:
        await coro
    return info.value.errno


def test_remote_handle_behaves_like_local(tiny_backend):
    async def main():
        async with daemon_with(tiny_backend) as d:
            local = session(d.kernel, "local")
            want = await local.llm.chat("Count to five.", max_tokens=12)
            async with llmos.connect(d.settings.socket_path, d.token, name="remote") as sys:
                chunks: list[str] = []
                got = await sys.llm.chat("Count to five.", max_tokens=12, on_text=chunks.append)
                me = await sys.proc.getpid()
                pid = await sys.proc.spawn(prog("exiter"))
                status = await sys.proc.wait(pid)
                errors = {
                    "nosys": await errno_of(sys.call("no.such.call")),
                    "esrch": await errno_of(sys.proc.kill(9999)),
                    "echild": await errno_of(sys.proc.wait()),
                    "enoent": await errno_of(sys.proc.spawn("/nope/agent.py")),
                }
                with pytest.raises(SyscallError) as bad:
                    await sys.call("llm.chat", messages=[{"role": "user", "content": "hi"}], max_tokens="lots")
                procs = {p.pid: p for p in await sys.proc.ps()}
                return want, got, chunks, me, status, errors, bad.value, procs, sys.pid

    want, got, chunks, me, status, errors, bad, procs, pid = trio.run(main)
    assert isinstance(got, ChatResponse) and got.content == want.content  # same model, greedy
    assert "".join(chunks) == got.content and len(chunks) > 1  # streamed as chunks
    assert me.pid == pid and me.name == "remote"
    assert isinstance(status, WaitResponse) and status.exit_code == 3 and status.result == {"answer": 42}
    assert errors == {"nosys": Errno.ENOSYS, "esrch": Errno.ESRCH, "echild": Errno.ECHILD, "enoent": Errno.ENOENT}
    assert bad.errno is Errno.EINVAL and "max_tokens" in bad.message and bad.details
    assert procs[pid].state is ProcState.RUNNING and procs[pid].syscalls >= 1


def test_run_remote_runs_programs_unchanged(tiny_backend, capsys):
    async def main():
        async with daemon_with(tiny_backend) as d:
            codes = {}
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("LLMOS_TOKEN", d.token)
                for name, args in (("exiter", []), ("crasher", ["x"]), ("talker", ["5"])):
                    codes[name] = await run_remote(prog(name), args, quiet=True, socket=d.settings.socket_path)
            with trio.move_on_after(5):  # the daemon notices each disconnect on its own time
                while any(p.session for p in d.kernel.procs):
                    await trio.sleep(0.01)
            return codes, [p.pid for p in d.kernel.procs if p.session]

    codes, sessions_left = trio.run(main)
    out = capsys.readouterr()
    assert codes == {"exiter": 3, "crasher": 1, "talker": 0}
    assert "RuntimeError: boom: x" in out.err
    assert sessions_left == []  # each run's session ended with its connection


def test_socket_and_token_are_private(tiny_backend):
    home = short_home()

    async def main():
        async with daemon_with(tiny_backend, home=home) as d:
            return stat.S_IMODE(d.settings.socket_path.stat().st_mode), d.token

    mode, token = trio.run(main)
    assert mode == 0o600
    assert stat.S_IMODE((home / "daemon.token").stat().st_mode) == 0o600
    _, again = trio.run(main)
    assert again == token  # made once, kept
    assert not (home / "daemon.sock").exists()  # removed on shutdown


def test_auth_is_required(tiny_backend):
    async def main():
        async with daemon_with(tiny_backend) as d:
            raw = await RawClient.open(d.settings.socket_path)
            await raw.frame({"id": 1, "op": "call", "name": "proc.ps"})
            before_hello = await raw.reply()
            await raw.frame({"id": 2, "op": "hello", "token": "guess"})
            wrong = await raw.reply()
            closed = await raw.reply()
            with pytest.raises(SyscallError) as via_sdk:
                async with llmos.connect(d.settings.socket_path, "guess"):
                    pass
            return before_hello, wrong, closed, via_sdk.value

    before_hello, wrong, closed, via_sdk = trio.run(main)
    assert before_hello["id"] == 1 and before_hello["error"]["errno"] == "EPERM"
    assert "hello" in before_hello["error"]["message"]
    assert wrong["error"] == {"errno": "EPERM", "message": "wrong token", "details": []}
    assert closed is None  # a wrong token ends the connection
    assert via_sdk.errno is Errno.EPERM


def test_inflight_limit_and_duplicate_ids(tiny_backend):
    async def main():
        async with daemon_with(tiny_backend, max_inflight=2) as d:
            raw = await RawClient.open(d.settings.socket_path)
            await raw.hello(d.token)
            for i in (1, 2):
                await raw.frame({"id": i, "op": "call", "name": "sleep", "args": {"seconds": 0.5}})
            await raw.frame({"id": 2, "op": "call", "name": "proc.getpid"})
            await raw.frame({"id": 3, "op": "call", "name": "proc.getpid"})
            replies = [await raw.reply() for _ in range(4)]
            return {r["id"]: r for r in replies}

    replies = trio.run(main)
    assert replies[3]["error"]["errno"] == "EAGAIN"
    assert replies[1]["result"] == {"ok": True}
    assert replies[2]["result"] == {"ok": True}  # the duplicate was refused, the first answered


def test_cancel_and_disconnect_free_the_batch(tiny_backend):
    async def main():
        async with daemon_with(tiny_backend) as d:
            k = d.kernel
            raw = await RawClient.open(d.settings.socket_path)
            me = await raw.hello(d.token)
            chat = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 3000, "stream": True}
            await raw.frame({"id": 1, "op": "call", "name": "llm.chat", "args": chat})
            first = await raw.reply()
            await raw.frame({"id": 1, "op": "cancel"})
            while len(k.scheduler):
                await trio.sleep(0.01)
            await raw.frame({"id": 2, "op": "call", "name": "proc.getpid"})
            while (r := await raw.reply())["id"] != 2:
                assert "chunk" in r  # chunks already on the way; never a result for call 1
            after_cancel = r
            # Now vanish mid-stream.
            await raw.frame({"id": 3, "op": "call", "name": "llm.chat", "args": chat})
            await raw.reply()
            await raw.close()
            with trio.fail_after(10):
                while len(k.scheduler) or k.procs.get(me["pid"]) is not None:
                    await trio.sleep(0.01)
            generated = k.engine.stats.tokens_generated
            async with llmos.connect(d.settings.socket_path, d.token) as sys:  # still serving
                ok = await sys.llm.chat("hi", max_tokens=3)
            return first, after_cancel, generated, ok

    first, after_cancel, generated, ok = trio.run(main)
    assert "chunk" in first
    assert after_cancel["result"]["name"] == "raw"
    assert generated < 3000 * 2
    assert ok.usage.completion_tokens >= 1


def test_client_proc_exit_and_timeout_cancel_remotely(tiny_backend):
    async def main():
        async with daemon_with(tiny_backend) as d:
            async with llmos.connect(d.settings.socket_path, d.token) as sys:
                with trio.move_on_after(0.3):
                    await sys.llm.chat("go on", max_tokens=3000)  # cancelled here, so there too
                with trio.fail_after(10):
                    while len(d.kernel.scheduler):
                        await trio.sleep(0.01)
                with pytest.raises(ProcessExit) as exit_info:
                    await sys.proc.exit(5, "bye")
                gone = d.kernel.procs.get(sys.pid)
            return exit_info.value, gone

    exited, gone = trio.run(main)
    assert (exited.code, exited.result) == (5, "bye")  # as in-process: exit does not return
    assert gone is None


def test_connect_without_daemon_says_so(tmp_path):
    async def main():
        with pytest.raises(SyscallError) as info:
            async with llmos.connect(tmp_path / "none.sock", "x"):
                pass
        return info.value

    err = trio.run(main)
    assert err.errno is Errno.EIO and "no llmos daemon" in err.message


def test_client_limit(tiny_backend):
    async def main():
        async with daemon_with(tiny_backend, max_clients=2) as d:
            a = await RawClient.open(d.settings.socket_path)
            b = await RawClient.open(d.settings.socket_path)
            await a.hello(d.token)
            await b.hello(d.token)
            c = await RawClient.open(d.settings.socket_path)
            refused = await c.reply()
            await a.close()
            await trio.sleep(0.1)
            c = await RawClient.open(d.settings.socket_path)
            return refused, await c.hello(d.token)

    refused, ok = trio.run(main)
    assert refused["error"]["errno"] == "EAGAIN"
    assert ok["pid"] > 0
