"""Agent workers, the kernel's side: the template process, a worker per process, its signals and
its exit status.

The template (llmos.agents.worker) is started on first need with a clean interpreter (`-I`),
a scrubbed environment and a session of its own (a Ctrl-C at the terminal is the kernel's),
and dies with the kernel (PR_SET_PDEATHSIG). `spawn` hands it the worker's end of a fresh
socketpair and gets back a pidfd: every signal goes through `pidfd_send_signal`, so a pid the
OS has recycled is never signalled, and the kernel learns of the exit by the pidfd becoming
readable. The template, the worker's parent, reaps it and reports its wait status. If the
template dies, its workers die with it (their parent-death signal); the kernel reports them as
killed and starts a new template for the next spawn.

Also here: what a worker is given (`worker_spec`): its limits from the process's quota, its
file grants from its fs root, and an environment that carries no secret of the kernel's.
"""

from __future__ import annotations

import array
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import trio
from pydantic import ValidationError

from llmos.abi.program import Location
from llmos.abi.worker import Exited, Failed, Ready, Spawned, WorkerSpec, template_message

START_TIMEOUT = 120.0  # seconds for the template to import the SDK (a cold disk, a busy machine)
REPORT_TIMEOUT = 5.0  # after a worker's exit, for the template's report of its status
MAX_MESSAGE = 1 << 20
WORKER_NICE = 10  # workers run well below the kernel: a busy agent cannot starve its loop
WORKER_BATCH = True  # and as SCHED_BATCH
ENV_PASSED = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class WorkerStartError(RuntimeError):
    pass


@dataclass(eq=False)
class Worker:
    """One worker process, as the kernel holds it: never by its bare pid."""

    pid: int  # the OS pid, for ps and logs only
    pidfd: int
    channel: trio.SocketStream | None = None
    status: int | None = None  # its wait status, once reaped
    reported: trio.Event = field(default_factory=trio.Event)
    started: float = field(default_factory=time.perf_counter)

    def signal(self, signum: int) -> None:
        if self.pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except (ProcessLookupError, OSError):
            pass  # already exited: the pidfd still names it, so no other process gets this

    async def reap(self, timeout: float) -> int | None:
        """Its wait status once it has exited and been reaped; None if that did not come
        within `timeout` (or the template died: the status is lost)."""
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(self.pidfd)
            with trio.move_on_after(REPORT_TIMEOUT):
                await self.reported.wait()
        return self.status

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def describe_status(status: int | None) -> tuple[int, str]:
    """(exit code, reason) for a worker that ended without saying how (no exit frame)."""
    if status is None:
        return 137, "killed: its worker process vanished (the worker template died)"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
        why = {
            signal.SIGSEGV: "segmentation fault",
            signal.SIGBUS: "bus error",
            signal.SIGABRT: "aborted",
            signal.SIGILL: "illegal instruction",
            signal.SIGFPE: "floating-point exception",
            signal.SIGXCPU: "over its CPU time limit",
            signal.SIGKILL: "killed by the system (out of memory?) or over its CPU time limit",
        }.get(signum)
        return 128 + signum, f"worker killed by {name}" + (f" ({why})" if why else "")
    code = os.WEXITSTATUS(status)
    return code, f"worker exited {code} without reporting how its program ended (os._exit, or a fatal error)"


class Template:
    """The template process and the kernel's end of its control socket."""

    def __init__(self, nursery: trio.Nursery, launched: "Launched | None" = None) -> None:
        self.nursery = nursery
        self._launched = launched  # a template process started before the kernel's loop was up
        self.ready: Ready | None = None
        self.workers: dict[int, Worker] = {}  # OS pid -> worker, until reaped
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.spawned = 0
        self._sock: trio.socket.SocketType | None = None
        self._up: trio.Event | None = None  # set when a template is ready
        self._spawn_lock = trio.Lock()
        self._replies: trio.MemorySendChannel[Worker | str]
        self._replies_out: trio.MemoryReceiveChannel[Worker | str]
        self._replies, self._replies_out = trio.open_memory_channel(1)
        self._closing = False
        self._awaiting = False  # a spawn waits for its reply

    @classmethod
    @asynccontextmanager
    async def open(cls, launched: "Launched | None" = None) -> AsyncIterator["Template"]:
        async with trio.open_nursery() as nursery:
            template = cls(nursery, launched)
            if launched is not None:
                await template.start_soon()
            try:
                yield template
            finally:
                template._closing = True
                with trio.CancelScope(shield=True):
                    await template._stop()
                nursery.cancel_scope.cancel()

    async def start_soon(self) -> trio.Event:
        """Start the template if it is not running; the event is set once it is ready."""
        if self._up is None:
            self._up = trio.Event()
            self.nursery.start_soon(self._supervise)
        await trio.lowlevel.checkpoint()
        return self._up

    async def start(self) -> Ready:
        """The template, started if it is not running; ready to fork."""
        await (await self.start_soon()).wait()
        if self.ready is None:
            raise WorkerStartError("the worker template could not be started (see the kernel's stderr)")
        return self.ready

    async def spawn(self, spec: WorkerSpec) -> Worker:
        """Fork a worker for `spec`; it starts confining itself at once."""
        await self.start()
        kernel_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            async with self._spawn_lock:  # replies come in request order
                if self._sock is None:
                    raise WorkerStartError("the worker template is restarting")
                data = json.dumps({"op": "spawn", "spec": spec.model_dump()}).encode()
                try:
                    await self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [worker_end.fileno()]))])
                except OSError as exc:
                    raise WorkerStartError(f"the worker template is gone: {exc}") from None
                worker_end.close()
                reply = await self._reply()
        except BaseException:
            kernel_end.close()
            worker_end.close()
            raise
        if isinstance(reply, str):
            kernel_end.close()
            raise WorkerStartError(reply)
        try:
            await trio.lowlevel.checkpoint_if_cancelled()  # killed while it was being forked
        except trio.Cancelled:
            reply.signal(signal.SIGKILL)
            reply.close()
            kernel_end.close()
            raise
        reply.channel = trio.SocketStream(trio.socket.from_stdlib_socket(kernel_end))
        self.spawned += 1
        return reply

    async def _reply(self) -> Worker | str:
        """The template's answer to the spawn just sent. Waited for even if the caller is
        cancelled meanwhile: a reply left unread would answer the next spawn."""
        self._awaiting = True
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(START_TIMEOUT):
                return await self._replies_out.receive()
            if self.process is not None:
                self.process.kill()  # a template that does not answer is broken: the next spawn starts another
            return "the worker template did not answer"
        finally:
            self._awaiting = False

    # -- the template's life -------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Start the template; when it dies, fail what it held and start another on next need."""
        assert self._up is not None
        try:
            await self._launch()
        except (OSError, WorkerStartError, trio.TooSlowError, ValidationError) as exc:
            print(f"llmos: cannot start the agent worker template: {exc}", file=sys.stderr)
            self._up.set()
            self._up = None  # the next spawn tries again
            return
        self._up.set()
        await self._read()
        self._lost()
        if not self._closing:
            print("llmos: the agent worker template exited; its workers were killed; starting a new one on next spawn",
                  file=sys.stderr)  # fmt: skip
            self._up = None

    async def _launch(self) -> None:
        launched, self._launched = self._launched or launch(), None
        self.process = launched.process
        self.starts += 1
        self._sock = trio.socket.from_stdlib_socket(launched.control)
        with trio.fail_after(START_TIMEOUT):
            message, _ = await self._receive()
        if not isinstance(message, Ready):
            raise WorkerStartError(f"the worker template said {message!r} first")
        self.ready = message

    async def _read(self) -> None:
        """Messages from the template until it closes its end."""
        while True:
            try:
                message, fds = await self._receive()
            except (OSError, EOFError, ValidationError, ValueError):
                return
            if isinstance(message, Spawned):
                if len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    await self._replies.send("the worker template sent no pidfd")
                    continue
                worker = Worker(message.pid, fds[0])
                self.workers[message.pid] = worker  # before any report of its exit can be read
                await self._replies.send(worker)
            elif isinstance(message, Failed):
                await self._replies.send(f"the worker template could not fork: {message.error}")
            elif isinstance(message, Exited):
                reaped = self.workers.pop(message.pid, None)
                if reaped is not None:
                    reaped.status = message.status
                    reaped.reported.set()
            for fd in fds if not isinstance(message, Spawned) else ():
                os.close(fd)

    async def _receive(self) -> tuple[Ready | Spawned | Failed | Exited, list[int]]:
        assert self._sock is not None
        data, ancdata, _, _ = await self._sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * array.array("i").itemsize))
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError("the worker template closed its end")
        return template_message.validate_json(data), list(fds)

    def _lost(self) -> None:
        """The template is gone: its workers die with it (their parent-death signal); their
        statuses are lost."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.ready = None
        if self._awaiting:
            self._replies.send_nowait("the worker template died")
        for worker in self.workers.values():
            worker.reported.set()
        self.workers.clear()
        if self.process is not None:
            self.process.poll()  # reap it if it has exited

    async def _stop(self) -> None:
        """Close the control socket: the template kills its workers, reaps them and exits."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        process = self.process
        if process is None or process.poll() is not None:
            return
        deadline = time.monotonic() + 5
        while process.poll() is None and time.monotonic() < deadline:
            await trio.sleep(0.01)
        if process.poll() is None:
            process.kill()
            process.wait()


@dataclass
class Launched:
    process: subprocess.Popen
    control: socket.socket  # the kernel's end of the control socket


def launch() -> Launched:
    """Start a template process (it imports the SDK in the background; `Template` waits for it)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        code = f"import sys; sys.path[:0] = {_llmos_path()!r}; from llmos.agents.worker import main; main()"
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", code, str(child.fileno()), str(os.getpid())],
            pass_fds=[child.fileno()], env=template_env(), start_new_session=True, stdin=subprocess.DEVNULL, cwd="/",
        )  # fmt: skip
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return Launched(process, parent)


def _llmos_path() -> list[str]:
    """Where this kernel imports llmos from, so the template imports the same tree."""
    import llmos

    return [str(Path(llmos.__file__).resolve().parent.parent)]


def template_env() -> dict[str, str]:
    """The template's environment: nothing the kernel was given (a token, an API key) but the
    locale, and malloc kept to two arenas (a worker's address space limit counts each arena)."""
    env = {k: os.environ[k] for k in ENV_PASSED if k in os.environ}
    env["PATH"] = DEFAULT_PATH
    env["MALLOC_ARENA_MAX"] = "2"
    return env


# -- what a worker is given --------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerLimits:
    address_space_mb: int | None
    cpu_seconds: int | None
    open_files: int | None


def worker_spec(
    pid: int, name: str, program: str, args: list[str], root: Path, location: Location, limits: WorkerLimits,
    tmp: Path, protected: Path | None, nice: int, umask: int,
) -> WorkerSpec:  # fmt: skip
    """What the template forks: the program, its grants (the fs root read-write, except a
    protected folder inside it: the kernel's data), its limits and a clean environment."""
    read_write, list_only = grants(root, protected)
    env = {k: os.environ[k] for k in ENV_PASSED if k in os.environ}
    env.update(PATH=DEFAULT_PATH, HOME=str(root), TMPDIR=str(tmp), LLMOS_PID=str(pid))
    return WorkerSpec(
        pid=pid, name=name, program=program, args=args, root=str(root), read_write=[*read_write, str(tmp)],
        read_only=[str(p) for p in location.readable], list_only=list_only,
        search_path=str(location.search_path) if location.search_path else None, env=env, umask=umask,
        nice=min(19, WORKER_NICE + max(0, nice)), batch=WORKER_BATCH,
        address_space=limits.address_space_mb * 2**20 if limits.address_space_mb else None,
        cpu_seconds=limits.cpu_seconds, open_files=limits.open_files,
    )  # fmt: skip


def grants(root: Path, protected: Path | None) -> tuple[list[str], list[str]]:
    """(read-write, list-only) paths giving everything beneath `root` except `protected`.

    Landlock grants only add up, so a folder inside the root is kept out by granting, on the
    way down to it, each folder's other entries in full and the folders on the way only a
    listing. (What is created in those folders later is not covered: rare, and refused.)"""
    protected = protected.resolve() if protected is not None else None
    if protected is None or protected == root or not protected.is_relative_to(root):
        return [str(root)], []
    read_write: list[str] = []
    list_only: list[str] = []
    folder = root
    for part in protected.relative_to(root).parts:
        list_only.append(str(folder))
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            break
        read_write.extend(str(folder / e) for e in entries if e != part)
        folder = folder / part
    return read_write, list_only


@functools.cache
def library_paths() -> tuple[Path, ...]:
    """What every worker may read (the template grants the same): the interpreter's libraries
    and site-packages, and llmos's own packages where they really are."""
    import llmos

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    paths.update(str(Path(llmos.__file__).resolve().parent / sub) for sub in ("", "abi", "agents"))
    return tuple(Path(p).resolve() for p in paths)


def make_tmp(pid: int) -> Path:
    """A private temp folder for a worker (its TMPDIR), removed when it exits."""
    return Path(tempfile.mkdtemp(prefix=f"llmos-pid{pid}-"))
