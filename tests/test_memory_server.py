"""Memory swapped to a real chroma server (`chroma run`, shipped with chromadb), started here on
a free localhost port; then the server goes down: clear typed errors, and no page that was
acknowledged as stored is lost."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import trio
from conftest import kernel_with
from test_memory import FACT, fill, with_memory

from llmos.abi.errors import Errno, SyscallError
from llmos.kernel.memory.manager import MemoryConfig
from llmos.runtime import session

CHROMA = Path(sys.executable).parent / "chroma"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChromaServer:
    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.url = f"http://localhost:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        log = open(self.path.parent / f"chroma-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [str(CHROMA), "run", "--path", str(self.path), "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"chroma exited {self.proc.returncode}"
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("chroma server did not answer its heartbeat")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def test_config_takes_the_server_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLMOS_CHROMA_URL", "http://localhost:9")
    assert MemoryConfig().chroma_url == "http://localhost:9"


def test_chroma_server_mode_and_outage(tiny_backend, tmp_path):
    server = ChromaServer(tmp_path / "server", free_port())
    server.start()

    async def body(kernel, sh):
        with_memory(kernel, tmp_path / "not-used", chroma_url=server.url, page_tokens=64, budget=96)
        fact = await sh.mem.store(FACT)
        await fill(sh, 10)
        before = await sh.mem.stat()
        found = await sh.mem.recall("What is the vault code of the harbour office?", k=1, page_in=False)

        await trio.to_thread.run_sync(server.stop)
        with_errors = {}
        for what, call in (
            ("store", fill(sh, 4)),  # the second store needs an eviction
            ("chat", sh.mem.chat("What is the vault code?", max_tokens=2)),  # needs a page fault
            ("recall", sh.mem.recall("vault code", k=1)),
        ):
            with_errors[what] = await errno_message(call)
        during = await sh.mem.stat()

        await trio.to_thread.run_sync(server.start)
        await fill(sh, 4)
        again = await sh.mem.recall("What is the vault code of the harbour office?", k=1)
        return fact, before, found, with_errors, during, again, await sh.mem.stat()

    async def main():
        async with kernel_with(tiny_backend) as kernel:
            return await body(kernel, session(kernel, "test"))

    try:
        fact, before, found, errors, during, again, after = trio.run(main)
    finally:
        server.stop()

    assert before.evicted_pages > 0 and found[0].page == fact[0] and found[0].text == FACT
    for what, (errno, message) in errors.items():
        assert errno is Errno.EIO, what
        assert "unavailable" in message and server.url in message, message
    # every acknowledged page is still there, resident ones with their text
    was = {e.page: e for e in before.entries}
    now = {e.page: e for e in during.entries}
    assert set(was) <= set(now) and len(now) <= len(was) + 1  # at most the one store that fit
    for page, entry in was.items():
        assert now[page].state == entry.state
        if entry.state == "resident":
            assert now[page].preview == entry.preview
    # and the pages evicted before the outage come back from the restarted server
    assert again[0].page == fact[0] and again[0].text == FACT and again[0].paged_in
    assert after.pages == during.pages + 4


async def errno_message(coro) -> tuple[Errno, str]:
    try:
        await coro
    except SyscallError as exc:
        return exc.errno, exc.message
    raise AssertionError("no error while the server was down")
