"""The swap device: evicted pages in the vector store.

Page-out writes a page's text, its embedding and its page-table entry to one chromadb
collection; page-in reads the text back by page number. Which pages to page in is decided in
RAM (ranking.py over index.py), so a page fault costs one store read. A page keeps its stored
copy after it is paged in, like Linux's swap cache: pages never change, so evicting the same
page again writes nothing. A memory attached after a restart reads its whole catalog back
(entries, texts for the search index, embeddings) and its texts leave RAM again.

Every method blocks (callers run them in a worker thread). Every store failure comes out as
VectorStoreUnavailable, so a chroma server that is down is one clear error.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.memory.pagetable import Page
from llmos.kernel.memory.vectorstore import VectorStoreUnavailable, open_client

COLLECTION = "llmos-memory"


@dataclass
class Stored:
    """A page as the store holds it. `text` and `vector` are empty in a catalog listing."""

    number: int
    position: int
    message: int
    role: str
    tokens: int
    pinned: bool
    created: float
    said: float
    text: str = ""
    vector: list[float] | None = None


class Swap:
    def __init__(self, embedder: Embedder, url: str | None = None, path: Path | None = None) -> None:
        self.embedder = embedder
        self.url = url
        self.path = path
        self._collection: Any = None
        self._open_lock = threading.Lock()

    @property
    def opened(self) -> bool:
        return self._collection is not None

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts)

    def collection(self) -> Any:
        """The chromadb collection, opened on first use; a failed open is retried next time."""
        with self._open_lock:
            if self._collection is None:
                client = open_client(self.url, self.path)
                self._collection = _guard(
                    self._where,
                    lambda: client.get_or_create_collection(
                        COLLECTION,
                        configuration={"hnsw": {"space": "cosine"}},
                        embedding_function=self.embedder.chroma_function(),
                    ),
                )
            return self._collection

    @property
    def _where(self) -> str:
        return self.url or str(self.path or "the embedded store")

    # -- page-out ------------------------------------------------------------------------

    def write(self, memory: str, pid: int, pages: list[Page], vectors: list[list[float]]) -> None:
        """Store pages (text, embedding, entry). Returns only once the store has them."""
        col = self.collection()
        now = time.time()
        _guard(
            self._where,
            lambda: col.upsert(
                ids=[_id(memory, p.number) for p in pages],
                embeddings=vectors,
                documents=[p.text for p in pages],
                metadatas=[_metadata(memory, pid, p, now) for p in pages],
            ),
        )

    # -- page-in -------------------------------------------------------------------------

    def read(self, memory: str, numbers: list[int]) -> list[Stored]:
        """Pages by number, with their texts."""
        col = self.collection()
        result = _guard(
            self._where, lambda: col.get(ids=[_id(memory, n) for n in numbers], include=["documents", "metadatas"])
        )
        return [_stored(m, d) for d, m in zip(result["documents"], result["metadatas"])]

    def catalog(self, memory: str, full: bool = False) -> list[Stored]:
        """Every stored page of `memory`: entries, and with `full` texts and embeddings too (to
        rebuild its page table and search index)."""
        col = self.collection()
        include = ["metadatas", "documents", "embeddings"] if full else ["metadatas"]
        result = _guard(self._where, lambda: col.get(where={"memory": memory}, include=include))
        if not full:
            return [_stored(m) for m in result["metadatas"]]
        return [_stored(m, d, v) for d, m, v in zip(result["documents"], result["metadatas"], result["embeddings"])]

    def delete(self, memory: str, numbers: list[int]) -> None:
        col = self.collection()
        _guard(self._where, lambda: col.delete(ids=[_id(memory, n) for n in numbers]))

    def drop(self, memory: str) -> None:
        col = self.collection()
        _guard(self._where, lambda: col.delete(where={"memory": memory}))


def _id(memory: str, number: int) -> str:
    return f"{memory}/{number}"


def _metadata(memory: str, pid: int, page: Page, now: float) -> dict[str, Any]:
    return {
        "memory": memory,
        "pid": pid,
        "page": page.number,
        "position": page.position,
        "message": page.message,
        "role": page.role,
        "tokens": page.tokens,
        "pinned": page.pinned,
        "created": page.created,
        "time": page.time,
        "stored": now,
    }


def _stored(meta: Any, text: str | None = None, vector: Any = None) -> Stored:
    return Stored(
        number=int(meta["page"]),
        position=int(meta["position"]),
        message=int(meta["message"]),
        role=str(meta["role"]),
        tokens=int(meta["tokens"]),
        pinned=bool(meta["pinned"]),
        created=float(meta["created"]),
        said=float(meta.get("time", meta["created"])),  # pages written before times were kept
        text=text or "",
        vector=[float(x) for x in vector] if vector is not None else None,
    )


def _guard(where: str, fn: Any) -> Any:
    try:
        return fn()
    except VectorStoreUnavailable:
        raise
    except Exception as exc:  # chromadb and httpx raise many unrelated types for "not there"
        raise VectorStoreUnavailable(f"vector store at {where} failed: {type(exc).__name__}: {exc}") from exc
