"""Reaches past its syscalls for what is not its own: `escape KERNEL_PID [FILE...]` tries to
read /etc/passwd and each FILE directly, the kernel's environment and memory, to signal the
kernel and its own parent (the worker template), to connect to Unix sockets, to run a program.
Returns each attempt's outcome: the exception's name, or "OK". With KERNEL_PID prefixed by
"kill:" it sends the kernel SIGKILL for real (against a daemon in its own process only)."""

import os
import signal
import socket

from llmos.agents import SyscallError


def attempt(fn):
    try:
        fn()
        return "OK"
    except BaseException as exc:  # noqa: BLE001 - each attempt reports how it failed
        return type(exc).__name__


async def main(sys, args):
    really = args[0].startswith("kill:")
    kernel_pid = int(args[0].removeprefix("kill:"))
    files = args[1:]
    out = {
        "read /etc/passwd": attempt(lambda: open("/etc/passwd").read()),
        "list /": attempt(lambda: os.listdir("/")),
        "list /home": attempt(lambda: os.listdir("/home")),
        "kernel environ": attempt(lambda: open(f"/proc/{kernel_pid}/environ", "rb").read()),
        "kernel memory": attempt(lambda: open(f"/proc/{kernel_pid}/mem", "rb").read(1)),
        "signal kernel": attempt(lambda: os.kill(kernel_pid, signal.SIGKILL if really else 0)),
        "signal template": attempt(lambda: os.kill(os.getppid(), 0)),
        "signal everyone": attempt(lambda: os.kill(-1, 0)),
        "signal its group": attempt(lambda: os.kill(0, 0)),
        "unix socket": attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)),
        "exec /bin/sh": attempt(lambda: os.execv("/bin/sh", ["sh", "-c", "true"])),
        "write /tmp": attempt(lambda: open(f"/tmp/llmos-escape-{os.getpid()}", "w").write("x")),
        "chroot": attempt(lambda: os.chroot("/")),
        "setuid": attempt(lambda: os.setuid(65534) or os.setuid(0)),
    }
    for path in files:
        out[f"read {path}"] = attempt(lambda: open(path).read())
        try:  # and through the syscall
            await sys.fs.read(path)
            out[f"fs.read {path}"] = "OK"
        except SyscallError as exc:
            out[f"fs.read {path}"] = exc.errno.value
    return out
