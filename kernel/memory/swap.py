"""The swap device: evicted pages in the vector store, found again by what they say.

Page-out writes a page's text, its embedding and its page-table entry to one chromadb
collection; page-in reads it back, by number or by relevance to a query (the page fault).
A page keeps its stored copy after it is paged in, like Linux's swap cache: pages never
change, so evicting the same page again writes nothing.

Relevance is hybrid. chromadb ranks candidates by cosine similarity of all-MiniLM-L6-v2
embeddings; then each candidate's score adds the share of the query's content words that
the page contains. Names and numbers, which a small embedding model blurs, decide which of
several look-alike pages ("X lives in ...", "Y lives in ...") is the one meant.

Every method blocks (callers run them in a worker thread). Every store failure comes out as
VectorStoreUnavailable, so a chroma server that is down is one clear error.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.memory.pagetable import Page
from llmos.kernel.memory.vectorstore import VectorStoreUnavailable, open_client

COLLECTION = "llmos-memory"
LEXICAL_WEIGHT = 0.5  # how much word overlap adds to cosine similarity (both in [0, 1])

_STOPWORDS = frozenset(
    """a an the of in on at to is are was were be been by for with and or but not no yes it its
    this that these those i me my you your he him his she her they them their we us our what
    which who whom whose does do did has have had how when where why about from as than then
    there here so if into out up down over also just very can could would should will shall may
    might must one some any all please tell say said""".split()
)
_WORD = re.compile(r"[^\W_]+")


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words that carry meaning; a plural 's' dropped ("lives" meets "live")."""
    words = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or len(word) < 2:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return frozenset(words)


def relevance(similarity: float, query_words: frozenset[str], text: str) -> float:
    if not query_words:
        return similarity
    overlap = len(query_words & content_words(text)) / len(query_words)
    return similarity + LEXICAL_WEIGHT * overlap


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
    text: str = ""
    vector: list[float] | None = None
    similarity: float = 0.0


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

    def write(self, memory: str, pid: int, pages: list[Page]) -> None:
        """Store pages (text, embedding, entry). Returns only once the store has them."""
        col = self.collection()
        now = time.time()
        _guard(
            self._where,
            lambda: col.upsert(
                ids=[_id(memory, p.number) for p in pages],
                embeddings=[p.vector for p in pages],
                documents=[p.text for p in pages],
                metadatas=[_metadata(memory, pid, p, now) for p in pages],
            ),
        )

    # -- page-in -------------------------------------------------------------------------

    def search(self, memory: str, vector: list[float], n: int, exclude: list[int]) -> list[Stored]:
        """The `n` stored pages of `memory` nearest to `vector`, leaving out page numbers in
        `exclude` (pages already resident)."""
        col = self.collection()
        where: dict[str, Any] = {"memory": memory}
        if exclude:
            where = {"$and": [where, {"page": {"$nin": exclude}}]}
        result = _guard(
            self._where,
            lambda: col.query(
                query_embeddings=[vector],
                n_results=n,
                where=where,
                include=["documents", "metadatas", "embeddings", "distances"],
            ),
        )
        docs, metas, vecs, dists = (result[k][0] for k in ("documents", "metadatas", "embeddings", "distances"))
        return [_stored(m, d, v, 1.0 - dist) for d, m, v, dist in zip(docs, metas, vecs, dists)]

    def read(self, memory: str, numbers: list[int]) -> list[Stored]:
        col = self.collection()
        result = _guard(
            self._where,
            lambda: col.get(ids=[_id(memory, n) for n in numbers], include=["documents", "metadatas", "embeddings"]),
        )
        return [_stored(m, d, v) for d, m, v in zip(result["documents"], result["metadatas"], result["embeddings"])]

    def catalog(self, memory: str) -> list[Stored]:
        """Every stored page of `memory`, entries only (to rebuild its page table)."""
        col = self.collection()
        result = _guard(self._where, lambda: col.get(where={"memory": memory}, include=["metadatas"]))
        return [_stored(m) for m in result["metadatas"]]

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
        "stored": now,
    }


def _stored(meta: Any, text: str | None = None, vector: Any = None, similarity: float = 0.0) -> Stored:
    return Stored(
        number=int(meta["page"]),
        position=int(meta["position"]),
        message=int(meta["message"]),
        role=str(meta["role"]),
        tokens=int(meta["tokens"]),
        pinned=bool(meta["pinned"]),
        created=float(meta["created"]),
        text=text or "",
        vector=[float(x) for x in vector] if vector is not None else None,
        similarity=float(similarity),
    )


def _guard(where: str, fn: Any) -> Any:
    try:
        return fn()
    except VectorStoreUnavailable:
        raise
    except Exception as exc:  # chromadb and httpx raise many unrelated types for "not there"
        raise VectorStoreUnavailable(f"vector store at {where} failed: {type(exc).__name__}: {exc}") from exc
