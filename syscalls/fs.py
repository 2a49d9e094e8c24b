"""Files, confined to the calling process's sandbox root (its `fs_root` capability).

Paths are resolved (following symlinks) before the check, so neither `..` nor a symlink that
points outside the root can reach a file beyond it.
"""

from __future__ import annotations

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
from llmos.syscalls.table import Call, syscall


def resolve(call: Call, path: str) -> Path:
    root = call.kernel.caps[call.proc.pid].fs_root
    if "\x00" in path:
        raise SyscallError(Errno.EINVAL, "path contains a NUL byte")
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise SyscallError(Errno.EPERM, f"{path!r} is outside the process's root {root}")
    return target


@syscall("fs.read")
async def read(call: Call, req: ReadRequest) -> ReadResponse:
    target = resolve(call, req.path)
    if not target.is_file():
        raise SyscallError(Errno.ENOENT, f"no such file: {req.path}")

    def _read() -> tuple[bytes, bool]:
        with open(target, "rb") as f:
            data = f.read(req.max_bytes + 1)
        return data[: req.max_bytes], len(data) > req.max_bytes

    data, truncated = await trio.to_thread.run_sync(_read)
    return ReadResponse(path=req.path, content=data.decode("utf-8", errors="replace"), truncated=truncated)


@syscall("fs.write")
async def write(call: Call, req: WriteRequest) -> WriteResponse:
    target = resolve(call, req.path)
    if target.is_dir():
        raise SyscallError(Errno.EINVAL, f"{req.path} is a directory")
    data = req.content.encode("utf-8")

    def _write() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "ab" if req.append else "wb") as f:
            f.write(data)

    await trio.to_thread.run_sync(_write)
    return WriteResponse(path=req.path, bytes_written=len(data))


@syscall("fs.list")
async def list_(call: Call, req: ListRequest) -> ListResponse:
    target = resolve(call, req.path)
    if not target.is_dir():
        raise SyscallError(Errno.ENOENT, f"no such folder: {req.path}")
    entries = []
    for child in sorted(target.iterdir()):
        try:
            st = child.stat()
        except OSError:
            continue
        entries.append(DirEntry(name=child.name, is_dir=child.is_dir(), size=st.st_size))
    return ListResponse(path=req.path, entries=entries)
