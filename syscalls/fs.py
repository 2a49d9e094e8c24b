"""Files, confined to the calling process's sandbox root (its `fs_root` capability).

Every path is opened beneath an open descriptor of the root (kernel/proc/beneath.py: openat2
with RESOLVE_BENEATH), so neither `..`, an absolute path, nor a symlink — not even one swapped
in while the call runs — reaches a file outside the root. The kernel's own data directory is
never reachable, even when a root contains it. Files fs.write creates get the mode the user's
umask gives (the kernel itself runs with 077 for its own files).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import trio

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.fs import (
    DirEntry,
    ListRequest,
    ListResponse,
    ReadRequest,
    ReadResponse,
    WriteRequest,
    WriteResponse,
)
from llmos.config import data_dir
from llmos.kernel.proc import beneath
from llmos.syscalls.table import Call, syscall


def root_of(call: Call) -> Path:
    return call.kernel.caps[call.proc.pid].fs_root


def relative(call: Call, path: str) -> str:
    """`path` relative to the caller's root (EINVAL for a NUL byte, EPERM for an absolute path
    outside it)."""
    try:
        return beneath.relative(root_of(call), path)
    except beneath.Escape:
        raise SyscallError(Errno.EPERM, f"{path!r} is outside the process's root {root_of(call)}") from None
    except ValueError as exc:
        raise SyscallError(Errno.EINVAL, str(exc)) from None


def os_error(exc: OSError, path: str, root: Path, what: str = "file or folder") -> SyscallError:
    if isinstance(exc, beneath.Escape):
        return SyscallError(Errno.EPERM, f"{path!r} is outside the process's root {root}")
    known = {
        errno.ENOENT: (Errno.ENOENT, f"no such {what}: {path}"),
        errno.ENOTDIR: (Errno.ENOENT, f"not a folder on the way to: {path}"),
        errno.EISDIR: (Errno.EINVAL, f"{path} is a directory"),
        errno.EACCES: (Errno.EPERM, f"permission denied: {path}"),
        errno.EPERM: (Errno.EPERM, f"permission denied: {path}"),
        errno.ELOOP: (Errno.EPERM, f"{path}: too many symlinks"),
        errno.ENOSPC: (Errno.EIO, f"no space left for {path}"),
    }
    errno_, message = known.get(exc.errno or 0, (Errno.EIO, f"{path}: {exc.strerror or exc}"))
    return SyscallError(errno_, message)


def check_private(fd: int, path: str) -> None:
    """The kernel's data directory (journal, audit log, token) is never a process's file."""
    if beneath.real_path(fd).is_relative_to(data_dir().resolve()):
        raise SyscallError(Errno.EPERM, f"{path!r} is in the kernel's data directory")


@syscall("fs.read")
async def read(call: Call, req: ReadRequest) -> ReadResponse:
    root, rel = root_of(call), relative(call, req.path)

    def _read() -> tuple[bytes, bool]:
        with beneath.root_dir(root) as root_fd, beneath.opened(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK) as fd:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SyscallError(Errno.ENOENT, f"no such file: {req.path}")
            check_private(fd, req.path)
            os.set_blocking(fd, True)
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(req.max_bytes + 1)
        return data[: req.max_bytes], len(data) > req.max_bytes

    try:
        data, truncated = await trio.to_thread.run_sync(_read)
    except OSError as exc:
        raise os_error(exc, req.path, root, "file") from None
    return ReadResponse(path=req.path, content=data.decode("utf-8", errors="replace"), truncated=truncated)


@syscall("fs.write")
async def write(call: Call, req: WriteRequest) -> WriteResponse:
    root, rel = root_of(call), relative(call, req.path)
    if rel == ".":
        raise SyscallError(Errno.EINVAL, f"{req.path} is a directory")
    data = req.content.encode("utf-8")
    mode = 0o666 & ~call.kernel.user_umask
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | (os.O_APPEND if req.append else 0)

    def _write() -> None:
        with beneath.root_dir(root) as root_fd:
            beneath.make_parents(root_fd, rel)
            with beneath.opened(root_fd, rel, flags, mode) as fd:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise SyscallError(Errno.EINVAL, f"{req.path} is not a regular file")
                check_private(fd, req.path)
                if not req.append:
                    os.ftruncate(fd, 0)
                os.set_blocking(fd, True)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]

    try:
        await trio.to_thread.run_sync(_write)
    except OSError as exc:
        raise os_error(exc, req.path, root) from None
    return WriteResponse(path=req.path, bytes_written=len(data))


@syscall("fs.list")
async def list_(call: Call, req: ListRequest) -> ListResponse:
    root, rel = root_of(call), relative(call, req.path)

    def _list() -> list[DirEntry]:
        with beneath.root_dir(root) as root_fd, beneath.opened(root_fd, rel, os.O_RDONLY | os.O_DIRECTORY) as fd:
            check_private(fd, req.path)
            entries = []
            for name in sorted(os.listdir(fd)):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)  # a link is listed, not followed
                except OSError:
                    continue
                entries.append(DirEntry(name=name, is_dir=stat.S_ISDIR(st.st_mode), size=st.st_size))
            return entries

    try:
        entries = await trio.to_thread.run_sync(_list)
    except NotADirectoryError:
        raise SyscallError(Errno.ENOENT, f"no such folder: {req.path}") from None
    except OSError as exc:
        raise os_error(exc, req.path, root, "folder") from None
    return ListResponse(path=req.path, entries=entries)
