"""`llmos daemon`: the kernel, headless, serving the syscall API to other programs.

Three doors, one kernel:
  - a Unix socket (mode 0600) speaking JSON lines (syscalls/wire.py): each connection says
    hello with the daemon's token and becomes a session process; its frames are syscalls made
    by that process, through the same `dispatch` an in-process agent uses (agents/remote.py
    is the client; `llmos.connect()` gives an agent program its usual `Sys` handle over it)
  - an HTTP listener on localhost (servers/http.py): the OpenAI-compatible API, /metrics for
    Prometheus and the web console, on FastAPI served by hypercorn in this trio loop
  - the journal (kernel/state/journal.py): state restored at start, committed as it changes

Bad input never reaches further than its own connection: every frame that cannot be acted on
is refused with an errno and a reason; a client may have `max_inflight` calls at once and the
daemon `max_clients` authenticated sessions; a frame is at most `max_frame` bytes; a client
that stops reading is dropped after SEND_TIMEOUT.

Authentication: a connection that has not said hello holds no session slot, only one of
`max_pending` places, for at most `hello_timeout` seconds; when they are all taken, the oldest
unauthenticated connection is dropped for the newcomer, so a flood of idle connections cannot
keep a client with the token out. Every failed hello is written to the audit log (with the
peer's pid and uid, from SO_PEERCRED) and answered only after FAILED_HELLO_DELAY; a peer uid
with more than AUTH_BURST failures is refused further hellos, unchecked, until its budget
refills (one attempt per AUTH_REFILL seconds). Agent workers never get here: their sandbox
cannot open a Unix socket, and a peer that is a worker is refused anyway.

On SIGTERM (or SIGINT) the daemon checkpoints the process table and exits; the next start
restores it (see kernel/state/journal.py for what that means).
A daemon that was killed outright (kill -9) leaves its socket and daemon.json behind; the next
start finds them stale (nobody answers on the socket, the pid is gone), removes them and says so.

The daemon is the kernel's front door, so unlike the rest of kernel/ it reaches up into the
syscall table: it is a client of `dispatch`, like the SDK.
"""

from __future__ import annotations

import gc
import hmac
import json
import os
import secrets
import signal
import socket as stdsocket
import struct
import sys
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.proc import KERNEL_PID
from llmos.abi.wire import (
    MAX_FRAME,
    CallFrame,
    CancelFrame,
    FrameError,
    Hello,
    HelloReply,
    LineReader,
    Oversized,
    encode,
    error_frame,
    parse_client_frame,
)
from llmos.agents.remote import daemon_listening
from llmos.kernel.kernel import Kernel, TableFull
from llmos.kernel.proc.capabilities import Capabilities
from llmos.kernel.proc.process import Process
from llmos.kernel.state.journal import Journal, Restored
from llmos.servers.telemetry import Telemetry
from llmos.syscalls.table import dispatch

DEFAULT_HTTP = ("127.0.0.1", 8470)
HELLO_TIMEOUT = 3.0  # a connection must authenticate this soon
FAILED_HELLO_DELAY = 0.5  # a wrong token is answered this late
AUTH_BURST = 10  # failed hellos a peer uid may make at once ...
AUTH_REFILL = 2.0  # ... then one more per this many seconds
SEND_TIMEOUT = 30.0  # a client that reads nothing for this long is dropped
COMMIT_INTERVAL = 1.0  # token counters and states reach the journal at least this often
TOKEN_FILE, SOCKET_FILE, JOURNAL_FILE, INFO_FILE = "daemon.token", "daemon.sock", "state.db", "daemon.json"


class DaemonError(RuntimeError):
    pass


@dataclass
class DaemonSettings:
    home: Path  # the data directory: token, socket, journal, daemon.json
    socket: Path | None = None  # default: home/daemon.sock
    http: tuple[str, int] | None = DEFAULT_HTTP  # port 0 picks a free one; None: no HTTP
    max_frame: int = MAX_FRAME
    max_clients: int = 256  # authenticated sessions at once
    max_pending: int = 64  # connections that have not authenticated yet (the oldest is dropped for a newcomer)
    hello_timeout: float = HELLO_TIMEOUT
    max_inflight: int = 32  # calls in flight per client
    resume: bool = False  # start restored processes again (else they wait, STOPPED, for `cont`)
    persist: bool = True
    synchronous: str = "NORMAL"  # the journal's sqlite synchronous mode (FULL: survive power loss)

    @property
    def socket_path(self) -> Path:
        return self.socket or self.home / SOCKET_FILE


def load_token(home: Path, create: bool = True) -> str:
    """The daemon's token: made on first start, kept in a 0600 file in the data directory."""
    path = home / TOKEN_FILE
    if create and not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    os.chmod(path, 0o600)
    return path.read_text().strip()


@dataclass
class Daemon:
    kernel: Kernel
    settings: DaemonSettings
    token: str
    journal: Journal | None = None
    restored: Restored = field(default_factory=Restored)
    http_port: int | None = None
    refused: int = 0  # frames refused with an error, for operators and tests
    clients: int = 0  # authenticated sessions
    auth_failures: int = 0
    evicted: int = 0  # unauthenticated connections dropped to make room
    pending: dict["Client", None] = field(default_factory=dict)  # not yet authenticated, oldest first
    auth_budget: dict[int, tuple[float, float]] = field(default_factory=dict)  # peer uid -> (attempts left, as of)
    cleared: list[str] = field(default_factory=list)  # stale files a crashed daemon left, removed at start
    telemetry: Telemetry = field(init=False)

    def __post_init__(self) -> None:
        self.telemetry = Telemetry(self.kernel)

    @property
    def base_url(self) -> str | None:
        if self.settings.http is None or self.http_port is None:
            return None
        host = self.settings.http[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.http_port}"

    @property
    def console_link(self) -> str | None:
        """The console's address with the token, to open once (the page then forgets the URL's token)."""
        return f"{self.base_url}/?token={self.token}" if self.base_url else None

    @classmethod
    @asynccontextmanager
    async def open(cls, kernel: Kernel, settings: DaemonSettings) -> AsyncIterator["Daemon"]:
        """Restore the journal, open the socket (and HTTP), serve until the block exits; then
        checkpoint and close. The kernel must be freshly booted."""
        daemon = cls(kernel, settings, load_token(settings.home))
        daemon.cleared = clear_stale(settings)  # first: fails if a daemon already runs here
        listener = _unix_listener(settings.socket_path)
        try:
            if settings.persist:
                daemon.journal = Journal(settings.home / JOURNAL_FILE, settings.synchronous)
                daemon.restored = daemon.journal.restore(kernel)
                kernel.journal = daemon.journal
                kernel.commit()
                if settings.resume:
                    for pid in daemon.restored.stopped:
                        kernel.cont(kernel.procs.get(pid))
            warm = getattr(kernel.runner, "warm", None)
            if warm is not None:
                await warm()  # the worker template is up before the first client asks for an agent
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, daemon._serve_client, [listener])
                if settings.http is not None:
                    from llmos.servers.http import serve_http

                    nursery.start_soon(daemon.telemetry.run)
                    host, port = settings.http
                    daemon.http_port = await nursery.start(
                        serve_http, kernel, daemon.token, host, port, settings.max_clients, daemon.telemetry)
                nursery.start_soon(daemon._commit_loop)
                daemon._write_info()
                try:
                    yield daemon
                finally:
                    daemon.checkpoint()
                    nursery.cancel_scope.cancel()
        finally:
            daemon.checkpoint()  # (again, for a start-up that failed half way)
            listener.socket.close()
            for path in (settings.socket_path, settings.home / INFO_FILE):
                path.unlink(missing_ok=True)
            if daemon.journal is not None:
                daemon.journal.close()

    def checkpoint(self) -> None:
        """Write the table one last time and stop journaling: what follows is shutdown, and
        the processes it cancels must be restored as they were, not as exited."""
        if self.journal is not None and self.kernel.journal is self.journal:
            self.kernel.commit()
            self.kernel.journal = None

    async def _commit_loop(self) -> None:
        while True:
            await trio.sleep(COMMIT_INTERVAL)
            self.kernel.commit()

    def _write_info(self) -> None:
        base = self.base_url
        info = {"pid": os.getpid(), "socket": str(self.settings.socket_path), "http": f"{base}/v1" if base else None,
                "console": f"{base}/" if base else None, "model": self.kernel.backend.name}
        path = self.settings.home / INFO_FILE
        path.write_text(json.dumps(info) + "\n")
        os.chmod(path, 0o600)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        """One connection. Whatever happens in it stays in it."""
        try:
            async with stream:
                if self.clients >= self.settings.max_clients:
                    await _send_quietly(stream, self.full())
                    return
                await Client(self, stream).serve()
        except Exception:  # a bug of ours, never the daemon's end
            print(f"llmos daemon: client handler failed:\n{traceback.format_exc()}", file=sys.stderr)

    def full(self) -> dict[str, Any]:
        return error_frame(None, self.full_error())

    def full_error(self) -> SyscallError:
        return SyscallError(Errno.EAGAIN, f"the daemon is serving {self.clients} clients, its limit; try later")

    def admit_pending(self, client: "Client") -> None:
        """A new unauthenticated connection takes a place; the oldest gives up its own if none is free."""
        self.pending[client] = None
        while len(self.pending) > self.settings.max_pending:
            oldest = next(iter(self.pending))
            del self.pending[oldest]
            oldest.scope.cancel()
            self.evicted += 1

    def auth_allowed(self, uid: int) -> float:
        """0 if peer `uid` may try a hello now, else the seconds until it may."""
        left, since = self.auth_budget.get(uid, (AUTH_BURST, time.monotonic()))
        now = time.monotonic()
        left = min(AUTH_BURST, left + (now - since) / AUTH_REFILL)
        self.auth_budget[uid] = (left, now)
        return 0.0 if left >= 1 else (1 - left) * AUTH_REFILL

    def auth_failed(self, uid: int) -> None:
        left, since = self.auth_budget.get(uid, (AUTH_BURST, time.monotonic()))
        self.auth_budget[uid] = (left - 1, since)
        self.auth_failures += 1


class ClientGone(Exception):
    """The client closed its end or stopped reading. Caught where it is raised: it must not
    travel through a nursery (it would arrive wrapped in an ExceptionGroup)."""


class Client:
    """One connection: a session process, and its calls in flight."""

    def __init__(self, daemon: Daemon, stream: trio.SocketStream) -> None:
        self.daemon = daemon
        self.kernel = daemon.kernel
        self.stream = stream
        self.scope = trio.CancelScope()  # cancelled to drop it while unauthenticated
        self.peer_pid, self.peer_uid = peer_credentials(stream)
        self.reader = LineReader(stream, daemon.settings.max_frame)
        self.send_lock = trio.Lock()
        self.session: Process | None = None
        self.calls: dict[int, trio.CancelScope] = {}
        self.nursery: trio.Nursery

    async def serve(self) -> None:
        self.daemon.admit_pending(self)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    await self._read_frames(nursery)
                    nursery.cancel_scope.cancel()  # the client left: its calls end with it
        finally:
            self.daemon.pending.pop(self, None)
            if self.session is not None:
                self.daemon.clients -= 1
                if self.session.alive:
                    self.kernel.end_session(self.session)

    async def _read_frames(self, nursery: trio.Nursery) -> None:
        timeout = self.daemon.settings.hello_timeout
        deadline = trio.current_time() + timeout
        while True:
            try:
                with trio.fail_after(max(deadline - trio.current_time(), 0) if self.session is None else float("inf")):
                    line = await self.reader.next()
            except trio.TooSlowError:
                with trio.move_on_after(1):
                    await self.refuse(None, SyscallError(Errno.ETIMEDOUT, f"no hello within {timeout:g} s"))
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if line is None:
                return
            if isinstance(line, Oversized):
                limit = self.daemon.settings.max_frame
                await self.refuse(None, SyscallError(Errno.E2BIG, f"frame of {line.size} bytes is over the {limit}-byte limit"))
                continue
            try:
                frame = parse_client_frame(line)
            except FrameError as err:
                await self.refuse(err.frame_id, err)
                continue
            if not await self._handle(frame, nursery):
                return

    async def _handle(self, frame: Hello | CallFrame | CancelFrame, nursery: trio.Nursery) -> bool:
        """Act on one frame; False ends the connection."""
        if isinstance(frame, Hello):
            return await self._hello(frame)
        if self.session is None:
            await self.refuse(frame.id, SyscallError(Errno.EPERM, "not authenticated: the first frame must be a hello with the daemon's token"))
            return True
        if isinstance(frame, CancelFrame):
            scope = self.calls.get(frame.id)
            if scope is not None:  # a call that already ended needs no cancelling
                scope.cancel()
            return True
        if frame.id in self.calls:
            await self.refuse(frame.id, SyscallError(Errno.EINVAL, f"call id {frame.id} is already in progress"))
        elif len(self.calls) >= self.daemon.settings.max_inflight:
            limit = self.daemon.settings.max_inflight
            await self.refuse(frame.id, SyscallError(Errno.EAGAIN, f"{limit} calls already in flight on this connection (the limit)"))
        else:
            self.calls[frame.id] = trio.CancelScope()
            nursery.start_soon(self._call, frame)
        return True

    async def _hello(self, frame: Hello) -> bool:
        if self.session is not None:
            await self.refuse(frame.id, SyscallError(Errno.EINVAL, f"already authenticated as pid {self.session.pid}"))
            return True
        started = time.perf_counter()
        peer = {"door": "socket", "name": frame.name, "peer_pid": self.peer_pid, "peer_uid": self.peer_uid}
        wait = self.daemon.auth_allowed(self.peer_uid)
        if wait:
            self.kernel.audit.record(KERNEL_PID, "auth", peer, "EAGAIN", time.perf_counter() - started)
            await self.refuse(frame.id, SyscallError(Errno.EAGAIN, f"too many failed hellos; try again in {wait:.1f} s"))
            return False
        if self.peer_pid > 0 and any(p.os_pid == self.peer_pid for p in self.kernel.procs):
            self.kernel.audit.record(KERNEL_PID, "auth", peer, "EPERM", time.perf_counter() - started)
            await self.refuse(frame.id, SyscallError(Errno.EPERM, "an agent worker talks to its kernel over its own channel"))
            return False
        if not hmac.compare_digest(frame.token.encode(), self.daemon.token.encode()):
            self.daemon.auth_failed(self.peer_uid)
            self.kernel.audit.record(KERNEL_PID, "auth", peer, "EPERM", time.perf_counter() - started)
            await trio.sleep(FAILED_HELLO_DELAY)
            await self.refuse(frame.id, SyscallError(Errno.EPERM, "wrong token"))
            return False
        if self.daemon.clients >= self.daemon.settings.max_clients:
            await self.refuse(frame.id, self.daemon.full_error())
            return False
        caps = Capabilities()
        if frame.root is not None:
            root = Path(frame.root)
            if not root.is_absolute() or not root.is_dir():
                await self.refuse(frame.id, SyscallError(Errno.EINVAL, f"root {frame.root!r} is not an absolute path to a directory"))
                return True
            caps = Capabilities(fs_root=root.resolve())
        try:
            self.session = self.kernel.session(frame.name, caps)
        except TableFull as exc:
            await self.refuse(frame.id, SyscallError(Errno.EAGAIN, str(exc)))
            return False
        self.daemon.pending.pop(self, None)  # a session now: no longer evictable
        self.daemon.clients += 1
        reply = HelloReply(pid=self.session.pid, name=self.session.name, model=self.kernel.backend.name)
        try:
            await self.send({"id": frame.id, "result": reply.model_dump()})
        except ClientGone:
            return False
        return True

    async def _call(self, frame: CallFrame) -> None:
        assert self.session is not None

        async def emit(chunk: Any) -> None:
            await self.send({"id": frame.id, "chunk": chunk.model_dump(mode="json")})

        try:
            with self.calls[frame.id]:
                try:
                    result = await dispatch(self.kernel, self.session.pid, frame.name, frame.args, emit)
                    reply = {"id": frame.id, "result": result.model_dump(mode="json")}
                except SyscallError as err:
                    reply = error_frame(frame.id, err)
                await self.send(reply)
        except ClientGone:
            self.nursery.cancel_scope.cancel()  # nobody to answer: end the connection's calls
        finally:
            self.calls.pop(frame.id, None)

    async def refuse(self, frame_id: int | None, err: SyscallError) -> None:
        self.daemon.refused += 1
        try:
            await self.send(error_frame(frame_id, err))
        except ClientGone:
            pass

    async def send(self, frame: dict[str, Any]) -> None:
        data = encode(frame)
        async with self.send_lock:
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                raise ClientGone(str(exc)) from None


def peer_credentials(stream: trio.SocketStream) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        pid, uid, _ = struct.unpack("3i", stream.socket.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i")))
        return pid, uid
    except (OSError, AttributeError):
        return -1, -1


async def _send_quietly(stream: trio.SocketStream, frame: dict[str, Any]) -> None:
    with trio.move_on_after(1):
        try:
            await stream.send_all(encode(frame))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def read_info(home: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((home / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def clear_stale(settings: DaemonSettings) -> list[str]:
    """Remove the socket and daemon.json of a daemon that is gone (killed outright, so it never
    cleaned up); raise DaemonError if one is still serving here. Returns what was removed."""
    path = settings.socket_path
    info = read_info(settings.home)
    if daemon_listening(path):
        who = f" (pid {info['pid']})" if info and "pid" in info else ""
        raise DaemonError(f"another llmos daemon{who} is listening on {path}")
    cleared = []
    if path.exists() or path.is_symlink():
        path.unlink()
        cleared.append(str(path))
    info_path = settings.home / INFO_FILE
    if info_path.exists():
        info_path.unlink()
        pid = info.get("pid") if info else None
        cleared.append(f"{info_path}" + (f" (pid {pid}, not running)" if pid and not _alive(pid) else ""))
    return cleared


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _unix_listener(path: Path) -> trio.SocketListener:
    """A listening Unix socket only its owner can connect to (mode 0600)."""
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no moment at which others could connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _say(text: str) -> None:
    print(text, flush=True)  # an operator (or a supervisor's log) sees it now, not at the next buffer's end


async def run(config: Any, settings: DaemonSettings, announce: Any = _say) -> int:
    """`llmos daemon`: boot, restore, serve until SIGTERM/SIGINT, checkpoint."""
    from llmos.runtime import boot

    if daemon_listening(settings.socket_path):  # before booting a kernel for nothing
        clear_stale(settings)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with boot(config) as kernel:
            # The model, tokenizer and libraries are ~0.4 M long-lived objects: a full garbage
            # collection scanning them stalls the loop for ~0.5 s. Collected once and frozen,
            # they are never scanned again; what the kernel makes from now on still is.
            gc.collect()
            gc.freeze()
            async with Daemon.open(kernel, settings) as daemon:
                r = daemon.restored
                base = daemon.base_url
                loaded = "loaded" if getattr(kernel.backend, "loaded", True) else "loads on the first LLM call"
                announce(
                    f"llmos daemon: pid {os.getpid()}, model {kernel.backend.name} ({loaded})\n"
                    + "".join(f"  removed stale {what}, left by a daemon that did not shut down\n" for what in daemon.cleared)
                    + f"  socket  {settings.socket_path}\n"
                    f"  openai  {f'{base}/v1' if base else 'off'}\n"
                    f"  metrics {f'{base}/metrics' if base else 'off'}\n"
                    f"  token   {settings.home / TOKEN_FILE}\n"
                    f"  agents  {kernel.runner.describe()}\n"
                    f"  restored {len(r.stopped)} stopped, {len(r.zombies)} exited, {r.reaped} reaped"
                    + (" (resumed)" if settings.resume and r.stopped else "")
                    + (f"\n\n  Open the console in a browser (the link carries the token):\n      {daemon.console_link}\n"
                       if daemon.console_link else "")
                )
                async for signum in signals:
                    announce(f"llmos daemon: {signal.Signals(signum).name}: checkpointing and shutting down")
                    break
    return 0
