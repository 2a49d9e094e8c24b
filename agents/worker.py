"""Agent workers: the template process that forks one worker per process, and the worker itself.

The kernel starts the template once (kernel/proc/workers.py); the template has imported the
SDK, the ABI and trio — never torch, never the kernel — and waits, single-threaded, for spawn
requests on its control socket (the protocol is llmos.abi.worker). For each it forks a worker,
which, before any of the program's code runs:
  - keeps only its channel to the kernel (fd 3) and its stdio, in a process group of its own,
    and dies with the template (PR_SET_PDEATHSIG);
  - moves to its fs root, takes the scrubbed environment it was given, its umask and nice;
  - confines itself (agents/sandbox.py): rlimits, Landlock, no capabilities, seccomp;
then loads the program and runs `main(sys, args)` under trio with a `Sys` whose transport is
the channel. How it ended goes back as the channel's last frame ("exit"): the return value, a
ProcessExit, or the traceback. A worker that dies without saying (a signal, os._exit) is
reported by its exit status, which the template reaps and passes on.

The template is a child subreaper: whatever a worker leaves behind is reparented to it and
reaped. When the kernel closes the control socket, the template kills its workers and exits.

    python -I -c "from llmos.agents.worker import main; main()" CONTROL_FD KERNEL_PID
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Any

import trio

import llmos.abi
import llmos.agents.tooluse  # noqa: F401  (loaded once here, shared by every worker)
from llmos.abi import ProcessExit
from llmos.abi.program import ProgramError
from llmos.abi.worker import Spawn, WorkerSpec
from llmos.agents import program, sandbox
from llmos.agents.remote import RemoteTransport
from llmos.agents.sdk import Sys

CHANNEL_FD = 3
MAX_CONTROL_MESSAGE = 1 << 20
MAX_RESULT = 4 * 2**20  # bytes of a program's result as JSON; more is an error, not a frame the kernel drops
EXIT_SETUP_FAILED = 70  # a worker that could not start its program (EX_SOFTWARE)
PR_SET_CHILD_SUBREAPER = 36
PUBLIC_SYSTEM_FILES = [
    "/usr", "/lib", "/lib64", "/lib32", "/etc/localtime", "/etc/ld.so.cache", "/etc/ssl", "/etc/ca-certificates",
    "/etc/pki", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf",
    "/etc/services", "/etc/protocols", "/etc/mime.types", "/dev/zero", "/dev/urandom", "/dev/random",
]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    control = socket.socket(fileno=int(argv[0]))
    Template(control, kernel_pid=int(argv[1])).serve()


def python_paths() -> list[str]:
    """What every worker may read: the interpreter's libraries and site-packages, llmos's own
    packages (where they really are: the source tree links them into llmos/), and the public
    system files Python and its libraries look at. Not /etc at large, not $HOME."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *PUBLIC_SYSTEM_FILES}
    paths.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    import llmos.agents

    for package in (llmos, llmos.abi, llmos.agents):
        paths.add(str(Path(package.__file__).resolve().parent))
    return sorted(p for p in paths if os.path.exists(p))


class Template:
    def __init__(self, control: socket.socket, kernel_pid: int) -> None:
        self.control = control
        self.kernel_pid = kernel_pid
        self.workers: set[int] = set()
        self.pid = os.getpid()
        self.support = sandbox.support()
        self.read_only = python_paths()

    def serve(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at a terminal is the kernel's to handle
        sandbox.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.kernel_pid:
            os._exit(0)  # the kernel is already gone
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.send({"op": "ready", "pid": os.getpid(), "landlock": self.support.landlock,
                   "seccomp": self.support.seccomp, "read_only": self.read_only})  # fmt: skip
        gc.freeze()  # what is loaded now is shared by every worker: no collection pass dirties it
        poller = select.poll()
        poller.register(self.control, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                elif not self.handle():
                    self.shutdown()
                    return
            self.reap()

    def handle(self) -> bool:
        """One request from the kernel; False when the kernel has closed the socket."""
        try:
            msg, fds, _, _ = socket.recv_fds(self.control, MAX_CONTROL_MESSAGE, 4)
        except ConnectionError:
            return False
        if not msg:
            return False
        try:
            request = Spawn.model_validate_json(msg)
            if len(fds) != 1:
                raise ValueError(f"a spawn carries one channel, got {len(fds)} descriptors")
        except ValueError as exc:
            for fd in fds:
                os.close(fd)
            self.send({"op": "failed", "error": str(exc)[:2000]})
            return True
        self.fork(request.spec, fds[0])
        return True

    def fork(self, spec: WorkerSpec, channel: int) -> None:
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(channel)
            self.send({"op": "failed", "error": f"fork: {exc}"})
            return
        if pid == 0:  # the worker
            try:
                become_worker(spec, channel, self)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(EXIT_SETUP_FAILED)
        os.close(channel)
        self.workers.add(pid)
        try:
            pidfd = os.pidfd_open(pid)  # not reaped yet (only this loop reaps): it is this very process
        except OSError as exc:  # (a container whose seccomp profile predates pidfds)
            os.kill(pid, signal.SIGKILL)
            self.send({"op": "failed", "error": f"pidfd_open: {exc} (workers need Linux >= 5.3 pidfds)"})
            return
        try:
            self.send({"op": "spawned", "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

    def reap(self) -> None:
        """Collect every child that has exited: workers (reported to the kernel, before any
        later spawn could reuse their pid) and whatever their descendants left here."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers:
                self.workers.discard(pid)
                self.send({"op": "exited", "pid": pid, "status": status})

    def shutdown(self) -> None:
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        try:
            if fds:
                socket.send_fds(self.control, [data], fds)
            else:
                self.control.send(data)
        except OSError:
            pass  # the kernel is gone; the next read says so


def become_worker(spec: WorkerSpec, channel: int, template: Template) -> None:
    """In the forked child: shed the template, confine, run the program. Never returns."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    sandbox.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != template.pid:
        os._exit(EXIT_SETUP_FAILED)  # the template died between fork and here
    os.setpgid(0, 0)  # a group of its own: a signal to "its group" reaches only itself
    if channel != CHANNEL_FD:
        os.dup2(channel, CHANNEL_FD)
        os.close(channel)
    os.set_inheritable(CHANNEL_FD, False)
    os.closerange(CHANNEL_FD + 1, os.sysconf("SC_OPEN_MAX"))  # the control socket, the wakeup pipe
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(spec.root)
    os.umask(spec.umask)
    if spec.nice:
        os.nice(spec.nice)
    if spec.batch:
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (OSError, AttributeError):
            pass
    os.environ.clear()
    os.environ.update(spec.env)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)  # a killed worker has said what it printed
    confinement = sandbox.Confinement(
        read_write=[*spec.read_write, "/dev/null"],
        read_only=[*template.read_only, *spec.read_only, "/proc/self"],
        list_only=spec.list_only,
        address_space=spec.address_space,
        cpu_seconds=spec.cpu_seconds,
        open_files=spec.open_files,
    )
    try:
        sandbox.confine(confinement, template.support)
    except OSError as exc:  # fail closed: a sandbox the kernel said it has must hold
        _report(spec, EXIT_SETUP_FAILED, f"cannot confine the worker: {exc}")
        os._exit(EXIT_SETUP_FAILED)
    if spec.search_path and spec.search_path not in sys.path:
        sys.path.append(spec.search_path)
    trio.run(run_program, spec)
    _flush()
    os._exit(0)


async def run_program(spec: WorkerSpec) -> None:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=CHANNEL_FD)))
    transport = RemoteTransport(stream, pid=spec.pid, peer="the kernel")
    code, reason, result = 0, "exited", None
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        try:
            entry = program.load(spec.program)
            result = await entry(Sys(transport), spec.args)
        except ProcessExit as exc:
            code, result = exc.code, exc.result
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except ProgramError as exc:
            code, reason = 1, f"cannot load the program: {exc}"
        except BaseException as exc:  # the agent's bug: its traceback is its exit reason
            code, reason = 1, "".join(traceback.format_exception(exc)).rstrip()
        _flush()
        await transport.send_frame(exit_frame(code, reason, result))
        nursery.cancel_scope.cancel()


def exit_frame(code: int, reason: str, result: Any) -> dict[str, Any]:
    code = code if 0 <= code <= 255 else 1
    try:
        size = len(json.dumps(result))
    except (TypeError, ValueError):
        result = repr(result)
        size = len(result)
    if size > MAX_RESULT:
        code, reason, result = 1, f"the program's result is {size} bytes as JSON, over the {MAX_RESULT}-byte limit", None
    return {"id": 0, "op": "exit", "code": code, "reason": reason[-60000:], "result": result}


def _report(spec: WorkerSpec, code: int, reason: str) -> None:
    """Say how it ended over the channel without trio (before the program could start)."""
    try:
        os.write(CHANNEL_FD, (json.dumps(exit_frame(code, reason, None)) + "\n").encode())
    except OSError:
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    main()

