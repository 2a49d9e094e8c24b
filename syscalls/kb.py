"""kb.ingest / kb.search / kb.list / kb.drop: the knowledge base (kernel/kb.py) as syscalls.

Files are read through the caller's sandbox root as fs.read reads them (opened beneath the
root's descriptor: nothing outside it, however the path changes meanwhile); a folder is walked
by descriptor for text and markdown files, and a symlink inside it is skipped, never followed.
Sources are named by their path inside the root, so an answer can cite them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

import trio

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.kb import (
    Collections,
    Document,
    Hit,
    IngestedSource,
    IngestResult,
    SearchResult,
)
from llmos.config import data_dir
from llmos.kernel.proc import beneath
from llmos.syscalls.fs import check_private, os_error, relative, root_of
from llmos.syscalls.table import Call
from llmos.syscalls.tools import tool

DOC_SUFFIXES = {".md", ".markdown", ".txt", ".rst"}
MAX_FILES = 2000  # per ingest call
MAX_FILE_BYTES = 4 * 1024 * 1024



@tool("kb.ingest", timeout=900)
async def ingest(
    call: Call,
    paths: list[str],
    texts: list[Document],
    collection: str,
) -> IngestResult:
    if not paths and not texts:
        raise SyscallError(Errno.EINVAL, "kb.ingest: give paths or texts")
    root = root_of(call)
    targets = [(path, relative(call, path)) for path in paths]
    docs, skipped = await trio.to_thread.run_sync(_read_documents, root, targets, abandon_on_cancel=True)
    docs += [(d.source, d.text) for d in texts]
    kb = call.kernel.kb
    done = await trio.to_thread.run_sync(kb.ingest, collection, docs, abandon_on_cancel=True)
    return IngestResult(
        collection=collection,
        sources=[IngestedSource(source=d.source, chunks=d.chunks) for d in done],
        chunks=sum(d.chunks for d in done),
        skipped=skipped,
    )


def _read_documents(root: Path, targets: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """Read the files and folders (walked for documents) `targets` name, each opened beneath the
    root as fs.read opens a path; inside a folder, a symlink is skipped, never followed."""
    docs: list[tuple[str, str]] = []
    skipped: list[str] = []
    private = data_dir().resolve()
    with beneath.root_dir(root) as root_fd:
        for shown, rel in targets:
            try:
                fd = beneath.open_beneath(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                raise os_error(exc, shown, root) from None
            try:
                check_private(fd, shown)
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    for folder, _, names, folder_fd in os.fwalk(".", dir_fd=fd):
                        if beneath.real_path(folder_fd).is_relative_to(private):
                            continue
                        for name in sorted(names):
                            if PurePosixPath(name).suffix.lower() in DOC_SUFFIXES:
                                source = (PurePosixPath(rel) / folder / name).as_posix().removeprefix("./")
                                _read_file(folder_fd, name, source, docs, skipped)
                                if len(docs) + len(skipped) > MAX_FILES:
                                    raise SyscallError(Errno.E2BIG, f"kb.ingest: more than {MAX_FILES} files; ingest fewer at a time")
                else:
                    _read_file(fd, None, PurePosixPath(rel).as_posix(), docs, skipped)
            finally:
                os.close(fd)
    docs.sort(key=lambda d: d[0])
    return docs, skipped


def _read_file(at: int, name: str | None, source: str, docs: list[tuple[str, str]], skipped: list[str]) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=at) if name else os.dup(at)
    except OSError as exc:
        skipped.append(f"{source}: " + ("a symlink (not followed)" if exc.errno == errno.ELOOP else exc.strerror or str(exc)))
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            skipped.append(f"{source}: not a file")
        elif st.st_size > MAX_FILE_BYTES:
            skipped.append(f"{source}: larger than {MAX_FILE_BYTES} bytes")
        else:
            os.set_blocking(fd, True)
            with os.fdopen(os.dup(fd), "rb") as f:
                docs.append((source, f.read(MAX_FILE_BYTES + 1).decode("utf-8", errors="replace")))
    except OSError as exc:
        skipped.append(f"{source}: {exc.strerror or exc}")
    finally:
        os.close(fd)


@tool("kb.search", timeout=60)
async def search(
    call: Call,
    query: str,
    k: int,
    collection: str,
    min_score: float | None,
) -> SearchResult:
    kb = call.kernel.kb
    hits = await trio.to_thread.run_sync(kb.search, collection, query, k, min_score, abandon_on_cancel=True)
    return SearchResult(
        collection=collection,
        hits=[Hit(text=h.text, source=h.source, index=h.index, heading=h.heading, score=h.score) for h in hits],
    )


@tool("kb.list", timeout=60)
async def list_(call: Call) -> Collections:
    kb = call.kernel.kb
    return Collections(collections=await trio.to_thread.run_sync(kb.collections, abandon_on_cancel=True))


@tool("kb.drop", timeout=60)
async def drop(call: Call, collection: str) -> bool:
    kb = call.kernel.kb
    return await trio.to_thread.run_sync(kb.drop, collection, abandon_on_cancel=True)
