"""Typed syscall errors: an errno-like code plus a message, the same in-process and remote."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel


class Errno(str, Enum):
    EINVAL = "EINVAL"  # invalid arguments (names the field)
    ENOSYS = "ENOSYS"  # no such syscall
    ESRCH = "ESRCH"  # no such process
    ECHILD = "ECHILD"  # not a child of the caller
    EPERM = "EPERM"  # permission denied by the caller's capabilities
    EKILLED = "EKILLED"  # the calling process has been killed
    ENOENT = "ENOENT"  # no such file or program
    ENOEXEC = "ENOEXEC"  # not a runnable agent program
    EBUSY = "EBUSY"  # the process already has a call of this kind in progress
    E2BIG = "E2BIG"  # input too large (prompt longer than the context, oversized argument)
    EAGAIN = "EAGAIN"  # a limit is reached for now (process table full)
    ETIMEDOUT = "ETIMEDOUT"
    EIO = "EIO"  # the service behind the syscall failed


class ErrorInfo(BaseModel):
    errno: Errno
    message: str
    details: list[dict[str, Any]] = []


class SyscallError(Exception):
    def __init__(self, errno: Errno, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"[{errno.value}] {message}")
        self.errno = errno
        self.message = message
        self.details = details or []

    def info(self) -> ErrorInfo:
        return ErrorInfo(errno=self.errno, message=self.message, details=self.details)

    @classmethod
    def from_info(cls, info: ErrorInfo) -> "SyscallError":
        return cls(info.errno, info.message, info.details)


def killed(pid: int, reason: str | None) -> SyscallError:
    """What a call of a process that has been killed (by a signal or its quota) gets."""
    return SyscallError(Errno.EKILLED, f"process {pid} has been killed: {reason}")
