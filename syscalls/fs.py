"""Files, confined to the calling process's sandbox root (its `fs_root` capability).

Paths are resolved (following symlinks) before the check, so neither `..` nor a symlink that
points outside the root can reach a file beyond it.
"""

from __future__ import annotations

from pathlib import Path

import trio
from pydantic import BaseModel, Field

from llmos.syscalls.errors import Errno, SyscallError
from llmos.syscalls.table import Call, syscall

MAX_READ = 4 * 1024 * 1024
MAX_WRITE = 4 * 1024 * 1024


def resolve(call: Call, path: str) -> Path:
    root = call.kernel.caps[call.proc.pid].fs_root
    if "\x00" in path:
        raise SyscallError(Errno.EINVAL, "path contains a NUL byte")
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise SyscallError(Errno.EPERM, f"{path!r} is outside the process's root {root}")
    return target


class ReadRequest(BaseModel):
    model_config = {"extra": "forbid"}
    path: str = Field(min_length=1, max_length=4096)
    max_bytes: int = Field(default=MAX_READ, ge=1, le=MAX_READ)


class ReadResponse(BaseModel):
    path: str
    content: str
    truncated: bool


@syscall("fs.read", ReadRequest, ReadResponse)
async def read(call: Call, req: ReadRequest) -> ReadResponse:
    """Read a text file inside the sandbox root."""
    target = resolve(call, req.path)
    if not target.is_file():
        raise SyscallError(Errno.ENOENT, f"no such file: {req.path}")

    def _read() -> tuple[bytes, bool]:
        with open(target, "rb") as f:
            data = f.read(req.max_bytes + 1)
        return data[: req.max_bytes], len(data) > req.max_bytes

    data, truncated = await trio.to_thread.run_sync(_read)
    return ReadResponse(path=req.path, content=data.decode("utf-8", errors="replace"), truncated=truncated)


class WriteRequest(BaseModel):
    model_config = {"extra": "forbid"}
    path: str = Field(min_length=1, max_length=4096)
    content: str = Field(max_length=MAX_WRITE)
    append: bool = False


class WriteResponse(BaseModel):
    path: str
    bytes_written: int


@syscall("fs.write", WriteRequest, WriteResponse)
async def write(call: Call, req: WriteRequest) -> WriteResponse:
    """Write (or append to) a text file inside the sandbox root, creating folders as needed."""
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


class ListRequest(BaseModel):
    model_config = {"extra": "forbid"}
    path: str = Field(default=".", min_length=1, max_length=4096)


class DirEntry(BaseModel):
    name: str
    is_dir: bool
    size: int


class ListResponse(BaseModel):
    path: str
    entries: list[DirEntry]


@syscall("fs.list", ListRequest, ListResponse)
async def list_(call: Call, req: ListRequest) -> ListResponse:
    """List a folder inside the sandbox root."""
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
