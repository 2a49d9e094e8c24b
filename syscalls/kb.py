"""kb.ingest / kb.search / kb.list / kb.drop: the knowledge base (kernel/kb.py) as syscalls.

Files are read through the caller's sandbox root, like fs.read: a folder is walked for text
and markdown files, and a file (or symlink) that resolves outside the root is skipped. Sources
are named by their path inside the root, so an answer can cite them.
"""

from __future__ import annotations

from pathlib import Path

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
from llmos.syscalls.fs import resolve
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
    root = call.kernel.caps[call.proc.pid].fs_root
    targets = [resolve(call, path) for path in paths]
    docs, skipped = await trio.to_thread.run_sync(_read_documents, targets, root, abandon_on_cancel=True)
    docs += [(d.source, d.text) for d in texts]
    kb = call.kernel.kb
    done = await trio.to_thread.run_sync(kb.ingest, collection, docs, abandon_on_cancel=True)
    return IngestResult(
        collection=collection,
        sources=[IngestedSource(source=d.source, chunks=d.chunks) for d in done],
        chunks=sum(d.chunks for d in done),
        skipped=skipped,
    )


def _read_documents(targets: list[Path], root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    files = []
    for target in targets:
        if not target.exists():
            raise SyscallError(Errno.ENOENT, f"no such file or folder: {target.relative_to(root)}")
        found = (p for p in target.rglob("*") if p.suffix.lower() in DOC_SUFFIXES) if target.is_dir() else [target]
        for path in found:
            files.append(path)
            if len(files) > MAX_FILES:
                raise SyscallError(Errno.E2BIG, f"kb.ingest: more than {MAX_FILES} files; ingest fewer at a time")
    docs, skipped = [], []
    for path in sorted(files):
        real = path.resolve()
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        if not real.is_relative_to(root) or not real.is_file():
            skipped.append(f"{name}: outside the root or not a file")
            continue
        try:
            if real.stat().st_size > MAX_FILE_BYTES:
                skipped.append(f"{name}: larger than {MAX_FILE_BYTES} bytes")
                continue
            docs.append((name, real.read_bytes().decode("utf-8", errors="replace")))
        except OSError as exc:
            skipped.append(f"{name}: {exc.strerror or exc}")
    return docs, skipped


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
