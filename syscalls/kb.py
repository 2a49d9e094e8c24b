"""kb.ingest / kb.search / kb.list / kb.drop: the knowledge base (kernel/kb.py) as syscalls.

Files are read through the caller's sandbox root, like fs.read: a folder is walked for text
and markdown files, and a file (or symlink) that resolves outside the root is skipped. Sources
are named by their path inside the root, so an answer can cite them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import trio
from pydantic import BaseModel, Field, StringConstraints

from llmos.kernel.kb import KnowledgeBase
from llmos.syscalls.errors import Errno, SyscallError
from llmos.syscalls.fs import resolve
from llmos.syscalls.table import Call
from llmos.syscalls.tools import tool

DOC_SUFFIXES = {".md", ".markdown", ".txt", ".rst"}
MAX_FILES = 2000  # per ingest call
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_TEXT = 4 * 1024 * 1024

Collection = Annotated[str, StringConstraints(min_length=1, max_length=48)]
PathArg = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class Document(BaseModel):
    model_config = {"extra": "forbid"}
    source: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT)]


class IngestedSource(BaseModel):
    source: str
    chunks: int


class IngestResult(BaseModel):
    collection: str
    sources: list[IngestedSource]
    chunks: int
    skipped: list[str]  # files left out: outside the root, too large, unreadable


class Hit(BaseModel):
    text: str
    source: str
    index: int  # the chunk's place in its source
    heading: str
    score: float  # cosine similarity of question and chunk


class SearchResult(BaseModel):
    collection: str
    hits: list[Hit]


class Collections(BaseModel):
    collections: dict[str, int]  # name -> chunks


def knowledge_base(call: Call) -> KnowledgeBase:
    if call.kernel.kb is None:
        call.kernel.kb = KnowledgeBase(call.kernel.embedder)  # one embedder per kernel
    return call.kernel.kb


@tool("kb.ingest", timeout=900)
async def ingest(
    call: Call,
    paths: Annotated[list[PathArg], Field(max_length=256)] = [],
    texts: Annotated[list[Document], Field(max_length=256)] = [],
    collection: Collection = "default",
) -> IngestResult:
    """Add documents to a knowledge base: text/markdown files or folders inside the caller's
    root, and texts given directly. Ingesting a source again replaces it.

    Args:
        paths: files or folders (walked for .md .markdown .txt .rst files)
        texts: documents given as {source, text}
        collection: which knowledge base
    """
    if not paths and not texts:
        raise SyscallError(Errno.EINVAL, "kb.ingest: give paths or texts")
    root = call.kernel.caps[call.proc.pid].fs_root
    targets = [resolve(call, path) for path in paths]
    docs, skipped = await trio.to_thread.run_sync(_read_documents, targets, root, abandon_on_cancel=True)
    docs += [(d.source, d.text) for d in texts]
    kb = knowledge_base(call)
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
    query: Annotated[str, StringConstraints(min_length=1, max_length=4000)],
    k: Annotated[int, Field(ge=1, le=50)] = 5,
    collection: Collection = "default",
    min_score: Annotated[float, Field(ge=-1, le=1)] | None = None,
) -> SearchResult:
    """Search a knowledge base by meaning: the chunks closest to the query, best first, each
    with its source and a relevance score (cosine similarity, 1 = same meaning).

    Args:
        query: a question or a description of what to find
        k: how many chunks at most
        collection: which knowledge base
        min_score: leave out chunks scoring below this
    """
    kb = knowledge_base(call)
    hits = await trio.to_thread.run_sync(kb.search, collection, query, k, min_score, abandon_on_cancel=True)
    return SearchResult(
        collection=collection,
        hits=[Hit(text=h.text, source=h.source, index=h.index, heading=h.heading, score=h.score) for h in hits],
    )


@tool("kb.list", timeout=60)
async def list_(call: Call) -> Collections:
    """The knowledge bases and how many chunks each holds."""
    kb = knowledge_base(call)
    return Collections(collections=await trio.to_thread.run_sync(kb.collections, abandon_on_cancel=True))


@tool("kb.drop", timeout=60)
async def drop(call: Call, collection: Collection) -> bool:
    """Delete a knowledge base; false if there was none by that name."""
    kb = knowledge_base(call)
    return await trio.to_thread.run_sync(kb.drop, collection, abandon_on_cancel=True)
