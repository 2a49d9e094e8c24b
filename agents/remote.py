"""The remote SDK: the same `Sys` handle, its syscalls carried to a daemon over its socket.

    import llmos

    async with llmos.connect() as sys:          # the local daemon, its token from the data dir
        print((await sys.llm.chat("Hello")).content)

An agent program cannot tell this handle from an in-process one: responses come back as the
syscall's response model (TABLE[name].response), stream chunks as its chunk model, errors as
SyscallError with the daemon's errno. The connection is a session process on the daemon
(full capabilities: holding the token means being the operator), and ends when the block
exits. Cancelling a call (a trio timeout, say) cancels the syscall on the daemon too.
"""

from __future__ import annotations

import itertools
import math
import os
import socket as stdsocket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio
from pydantic import BaseModel, ValidationError

from llmos.abi import SYSCALLS, ProcessExit
from llmos.abi.errors import Errno, SyscallError
from llmos.abi.wire import (
    MAX_REPLY_FRAME,
    HelloReply,
    LineReader,
    Oversized,
    encode,
    error_from,
)
from llmos.agents.sdk import Emit, Sys
from llmos.config import data_dir

SOCKET_FILE, TOKEN_FILE = "daemon.sock", "daemon.token"


class Reply(BaseModel):
    """The response of a syscall this client's table does not know (a newer daemon)."""

    model_config = {"extra": "allow"}


class DaemonUnavailable(SyscallError):
    def __init__(self, message: str) -> None:
        super().__init__(Errno.EIO, message)


class RemoteTransport:
    """Carries syscalls over one connection to a kernel (a daemon's socket, or an agent
    worker's channel, `peer` naming which in errors); `run` must be running to read replies."""

    def __init__(self, stream: trio.abc.Stream, pid: int = -1, peer: str = "the daemon") -> None:
        self.stream = stream
        self.pid = pid
        self.peer = peer
        self.hello: HelloReply | None = None
        self._reader = LineReader(stream, MAX_REPLY_FRAME)
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._send_lock = trio.Lock()
        self._lost: str | None = None

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Read frames and hand each to the call waiting for it, until the connection ends."""
        task_status.started()
        reason = f"{self.peer} closed the connection"
        try:
            while True:
                line = await self._reader.next()
                if line is None:
                    break
                if isinstance(line, Oversized):
                    reason = f"{self.peer} sent a frame of {line.size} bytes, over the client's limit"
                    break
                frame = _decode(line)
                send = self._pending.get(frame.get("id")) if isinstance(frame.get("id"), int) else None
                if send is not None:
                    send.send_nowait(frame)
                elif "error" in frame and frame.get("id") is None:
                    reason = f"{self.peer} refused the connection: {error_from(frame).message}"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"connection to {self.peer} lost: {exc}"
        finally:
            self._lost = reason
            for send in self._pending.values():
                send.close()

    async def open(self, token: str, name: str, root: str | None) -> HelloReply:
        reply = await self._request({"op": "hello", "token": token, "name": name, "root": root}, None, None)
        self.hello = HelloReply.model_validate(reply)
        self.pid = self.hello.pid
        return self.hello

    async def call(self, name: str, args: dict[str, Any], emit: Emit | None = None) -> BaseModel:
        entry = SYSCALLS.get(name)
        result = await self._request({"op": "call", "name": name, "args": args}, emit, entry.chunk if entry else Reply)
        response = _model(entry.response if entry else Reply, result, name)
        if name == "proc.exit":  # as in-process: exit does not return to the program
            raise ProcessExit(int(args.get("code", 0)), args.get("result"))
        return response

    async def _request(self, frame: dict[str, Any], emit: Emit | None, chunk_model: type[BaseModel] | None) -> Any:
        if self._lost is not None:
            raise DaemonUnavailable(self._lost)
        frame_id = next(self._ids)
        send, recv = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._pending[frame_id] = send
        try:
            await self._send({"id": frame_id, **frame})
            async for reply in recv:
                if "chunk" in reply:
                    if emit is not None and chunk_model is not None:
                        await emit(_model(chunk_model, reply["chunk"], frame.get("name", "")))
                elif "result" in reply:
                    return reply["result"]
                else:
                    raise error_from(reply)
            raise DaemonUnavailable(self._lost or f"connection to {self.peer} lost")
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._send({"id": frame_id, "op": "cancel"}, quiet=True)
            raise
        finally:
            del self._pending[frame_id]

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send a frame that expects no reply (an agent worker's exit frame)."""
        await self._send(frame, quiet=True)

    async def _send(self, frame: dict[str, Any], quiet: bool = False) -> None:
        try:
            async with self._send_lock:
                await self.stream.send_all(encode(frame))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if not quiet:
                raise DaemonUnavailable(f"connection to {self.peer} lost: {exc}") from None


def _decode(line: bytes) -> dict[str, Any]:
    import json

    try:
        frame = json.loads(line)
    except ValueError:
        return {}
    return frame if isinstance(frame, dict) else {}


def _model(model: type[BaseModel], data: Any, name: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SyscallError(Errno.EIO, f"{name}: the daemon's reply does not fit {model.__name__}: {exc}") from None


def daemon_listening(path: Path) -> bool:
    """Whether a daemon answers on the socket at `path` (a connect, nothing sent)."""
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def socket_path() -> Path:
    return Path(os.environ.get("LLMOS_SOCKET") or data_dir() / SOCKET_FILE)


def daemon_token() -> str:
    token = os.environ.get("LLMOS_TOKEN")
    if token:
        return token
    path = data_dir() / TOKEN_FILE
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise DaemonUnavailable(f"no daemon token: {exc} (set LLMOS_TOKEN, or run as the daemon's user)") from None


@asynccontextmanager
async def connect(
    socket: str | Path | None = None,
    token: str | None = None,
    name: str = "client",
    root: str | Path | None = None,
) -> AsyncIterator[Sys]:
    """A `Sys` handle on a running daemon, as session process `name`. Defaults: the socket and
    token in the data directory (LLMOS_SOCKET, LLMOS_TOKEN override), fs root the current
    directory. Raises DaemonUnavailable (errno EIO) when no daemon answers."""
    path = Path(socket) if socket is not None else socket_path()
    secret = token if token is not None else daemon_token()
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise DaemonUnavailable(f"no llmos daemon at {path}: {exc.strerror or exc}") from None
    async with stream:
        transport = RemoteTransport(stream)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.run)
                await transport.open(secret, name[:64] or "client", str(Path(root or os.getcwd()).resolve()))
                try:
                    yield Sys(transport)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The reader task cannot fail, so a group holds what the caller's block raised:
            # hand it back as raised (an agent's SyscallError, ProcessExit, KeyboardInterrupt).
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
