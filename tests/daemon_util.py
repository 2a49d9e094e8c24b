"""Helpers for the daemon tests: an in-process daemon on a given backend, a daemon in its own
process (for SIGKILL and load), and a raw JSON-lines client for frames the SDK would never send."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio
from conftest import kernel_with

from llmos.servers.daemon import INFO_FILE, Daemon, DaemonSettings


def short_home() -> Path:
    """A data dir whose socket path fits in sun_path (108 bytes), unlike some pytest tmp paths;
    removed when the test session ends."""
    path = Path(tempfile.mkdtemp(prefix="llmosd-", dir="/tmp"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@asynccontextmanager
async def daemon_with(backend: Any, home: Path | None = None, **settings: Any) -> AsyncIterator[Daemon]:
    settings.setdefault("http", None)
    async with kernel_with(backend, **settings.pop("kernel", {})) as kernel:
        async with Daemon.open(kernel, DaemonSettings(home=home or short_home(), **settings)) as daemon:
            yield daemon


class RawClient:
    """Frames as bytes, replies as dicts: for saying what a well-behaved client never says."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, path: Path) -> "RawClient":
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def frame(self, obj: dict[str, Any]) -> None:
        await self.send(json.dumps(obj).encode() + b"\n")

    async def reply(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next frame from the daemon; None when it closed the connection."""
        with trio.fail_after(timeout):
            while b"\n" not in self.buf:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    async def hello(self, token: str, name: str = "raw") -> dict[str, Any]:
        await self.frame({"id": 0, "op": "hello", "token": token, "name": name})
        reply = await self.reply()
        assert reply is not None and "result" in reply, reply
        return reply["result"]

    async def close(self) -> None:
        await self.stream.aclose()


class DaemonProcess:
    """`llmos daemon` as an operator runs it, in its own process."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 180) -> "DaemonProcess":
        env = dict(os.environ, LLMOS_HOME=str(self.home), HF_HUB_OFFLINE="1")
        self.log = open(self.home / "daemon.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmos", "daemon", *self.args], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            try:
                self.info = json.loads((self.home / INFO_FILE).read_text())
                if self.info.get("pid") == self.proc.pid:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not start in {timeout} s:\n{self.output()}")

    @property
    def socket(self) -> Path:
        return Path(self.info["socket"])

    @property
    def token(self) -> str:
        return (self.home / "daemon.token").read_text().strip()

    def output(self) -> str:
        return (self.home / "daemon.log").read_text()

    def wait_output(self, text: str, timeout: float = 30) -> str:
        """The log once it holds `text` (the banner follows daemon.json by a moment)."""
        deadline = time.monotonic() + timeout
        while text not in (out := self.output()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return out

    def signal(self, signum: int, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self.log.close()
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
