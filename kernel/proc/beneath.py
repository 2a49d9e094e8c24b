"""Opening a path beneath a process's fs root, so that no symlink or `..` leads out of it —
not even one swapped in while the path is being opened.

Checking a resolved path and then opening it is a race: between the two, a folder on the way
can become a symlink to /etc. Here the kernel resolves the path itself, relative to an open
descriptor of the root: `openat2` with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS (Linux >= 5.6)
fails with EXDEV the moment resolution would leave the root, whatever the path holds by then.
Where openat2 is missing, each component is opened with `openat(..., O_NOFOLLOW)` from the
one before: no symlink is followed at all (a path through one is refused), and `..` is
resolved by name, never past the root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class Escape(PermissionError):
    """The path leads out of the root (by `..`, an absolute path or a symlink)."""


_have_openat2: bool | None = None if SYS_OPENAT2 is not None else False


def relative(root: Path, path: str) -> str:
    """`path` as the process means it, relative to its root: an absolute path must lie inside
    the root (lexically); NUL bytes are refused."""
    if "\x00" in path:
        raise ValueError("path contains a NUL byte")
    p = PurePosixPath(path)
    if p.is_absolute():
        try:
            p = p.relative_to(root)
        except ValueError:
            raise Escape(errno.EPERM, f"{path!r} is outside the root") from None
    return str(p) if str(p) not in ("", ".") else "."


def open_beneath(root_fd: int, path: str, flags: int, mode: int = 0o666) -> int:
    """A descriptor for `path` (relative) opened beneath the directory `root_fd`. Raises
    Escape for a path that leads out, else the OSError of the open."""
    global _have_openat2
    flags |= os.O_CLOEXEC
    if _have_openat2 is not False:
        creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE  # (O_TMPFILE includes O_DIRECTORY)
        how = _OpenHow(flags=flags, mode=mode if creates else 0,
                       resolve=RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)  # fmt: skip
        fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(root_fd), os.fsencode(path), ctypes.byref(how),
                           ctypes.c_size_t(ctypes.sizeof(how)))  # fmt: skip
        if fd >= 0:
            _have_openat2 = True
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) and _have_openat2 is None:
            _have_openat2 = False  # (EPERM: a container's seccomp profile that predates it)
        elif err == errno.EXDEV:
            raise Escape(errno.EPERM, f"{path!r} leads outside the root")
        else:
            raise OSError(err, os.strerror(err), path)
    return _open_by_components(root_fd, path, flags, mode)


def _open_by_components(root_fd: int, path: str, flags: int, mode: int) -> int:
    parts = [p for p in PurePosixPath(path).parts if p not in ("", ".")]
    stack = [os.dup(root_fd)]  # the folders walked into, for `..`
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "..":
                if len(stack) == 1:
                    raise Escape(errno.EPERM, f"{path!r} leads outside the root")
                os.close(stack.pop())
                if last:
                    return os.open(".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=stack[-1])
                continue
            try:
                if last:
                    return os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=stack[-1])
                stack.append(os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1]))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(os.path.join(f"/proc/self/fd/{stack[-1]}", part)):
                    raise Escape(errno.EPERM, f"{path!r} goes through a symlink (not followed here)") from None
                raise
        return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


@contextmanager
def opened(root_fd: int, path: str, flags: int, mode: int = 0o666) -> Iterator[int]:
    fd = open_beneath(root_fd, path, flags, mode)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def root_dir(root: Path) -> Iterator[int]:
    """An O_PATH descriptor of the root folder itself."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def make_parents(root_fd: int, path: str) -> None:
    """mkdir -p for `path`'s parent folders, each made beneath the root (never through a link)."""
    parent = PurePosixPath(path).parent
    done = PurePosixPath(".")
    for part in parent.parts:
        if part in ("", "."):
            continue
        here = done / part
        try:
            os.close(open_beneath(root_fd, str(here), os.O_PATH | os.O_DIRECTORY))
        except FileNotFoundError:
            with opened(root_fd, str(done), os.O_PATH | os.O_DIRECTORY) as at:
                try:
                    os.mkdir(part, 0o777, dir_fd=at)
                except FileExistsError:
                    pass
        done = here


def real_path(fd: int) -> Path:
    """Where an open descriptor really is (for checks after the open, such as the data dir)."""
    return Path(os.readlink(f"/proc/self/fd/{fd}"))
