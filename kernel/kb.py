"""The knowledge base: documents split into chunks, embedded with all-MiniLM-L6-v2 and kept in
chromadb, searched by meaning.

Chunking follows the document's own structure: markdown headings open sections, blank lines
separate paragraphs, and paragraphs are packed into chunks of about CHUNK_CHARS characters (a
paragraph longer than that is cut at sentence ends, then at spaces). Each chunk remembers its
source and the heading it sits under, and carries that heading in the embedded text so a
chunk about "Installation" is found by a question about installing.

A collection is one chroma collection `kb-<name>`, cosine space: a hit's score is the cosine
similarity of question and chunk (1 is the same meaning, around 0 unrelated). Ingesting a
source again replaces its chunks. The methods block (embedding, disk): callers run them in a
worker thread.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.memory.vectorstore import open_client

CHUNK_CHARS = 800
WRITE_BATCH = 1000  # chunks (or sources) per chromadb write
COLLECTION_PREFIX = "kb-"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Chunk:
    text: str
    source: str
    index: int
    heading: str


@dataclass
class Hit:
    text: str
    source: str
    index: int
    heading: str
    score: float


@dataclass
class Ingested:
    source: str
    chunks: int


def chunk_text(text: str, source: str, size: int = CHUNK_CHARS) -> list[Chunk]:
    pieces: list[tuple[str, str]] = []  # (heading, piece of text)
    for heading, body in _sections(text):
        for paragraph in _paragraphs(body):
            pieces.extend((heading, part) for part in _split_long(paragraph, size))
    chunks: list[Chunk] = []
    current, current_heading = "", ""
    for heading, piece in pieces:
        if current and (heading != current_heading or len(current) + 2 + len(piece) > size):
            chunks.append(Chunk(current, source, len(chunks), current_heading))
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
        current_heading = heading
    if current:
        chunks.append(Chunk(current, source, len(chunks), current_heading))
    return chunks


def _sections(text: str) -> list[tuple[str, str]]:
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            sections.append((m.group(2).strip(), []))
        else:
            sections[-1][1].append(line)
    return [(heading, "\n".join(lines)) for heading, lines in sections if "".join(lines).strip()]


def _paragraphs(body: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]


def _split_long(paragraph: str, size: int) -> list[str]:
    if len(paragraph) <= size:
        return [paragraph]
    parts: list[str] = []
    current = ""
    for unit in _units(paragraph, size):
        if current and len(current) + 1 + len(unit) > size:
            parts.append(current)
            current = ""
        current = f"{current} {unit}" if current else unit
    if current:
        parts.append(current)
    return parts


def _units(paragraph: str, size: int) -> list[str]:
    """Sentences, and any sentence longer than `size` cut into words, and any word into slices."""
    units: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        if len(sentence) <= size:
            units.append(sentence)
            continue
        for word in sentence.split():
            units.extend(word[i : i + size] for i in range(0, len(word), size))
    return units


class CollectionName(ValueError):
    pass


class KnowledgeBase:
    def __init__(self, embedder: Embedder | None = None, client_factory: Callable[[], Any] = open_client) -> None:
        self.embedder = embedder or Embedder()
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()  # one writer at a time: ingest deletes then adds

    def ingest(self, collection: str, documents: list[tuple[str, str]], size: int = CHUNK_CHARS) -> list[Ingested]:
        """Chunk, embed and store (source, text) documents; a source seen before is replaced.
        All chunks are embedded in one batch and written in a few large writes: per-document
        writes would cost a transaction each."""
        col = self._collection(collection, create=True)
        latest = dict(documents)  # a source given twice: the last text wins
        chunks = [c for source, text in latest.items() for c in chunk_text(text, source, size)]
        vectors = self.embedder.embed([_embedded_text(c) for c in chunks])
        sources = list(latest)
        with self._lock:
            for i in range(0, len(sources), WRITE_BATCH):
                col.delete(where={"source": {"$in": sources[i : i + WRITE_BATCH]}})
            for i in range(0, len(chunks), WRITE_BATCH):
                batch = chunks[i : i + WRITE_BATCH]
                col.add(
                    ids=[f"{c.source}#{c.index}" for c in batch],
                    documents=[c.text for c in batch],
                    embeddings=vectors[i : i + WRITE_BATCH],
                    metadatas=[{"source": c.source, "index": c.index, "heading": c.heading} for c in batch],
                )
        counts = dict.fromkeys(sources, 0)
        for c in chunks:
            counts[c.source] += 1
        return [Ingested(source, n) for source, n in counts.items()]

    def search(self, collection: str, query: str, k: int = 5, min_score: float | None = None) -> list[Hit]:
        col = self._collection(collection, create=False)
        if col is None or col.count() == 0:
            return []
        vector = self.embedder.embed([query])
        found = col.query(query_embeddings=vector, n_results=min(k, col.count()), include=["documents", "metadatas", "distances"])
        hits = []
        for text, meta, distance in zip(found["documents"][0], found["metadatas"][0], found["distances"][0]):
            score = round(1.0 - float(distance), 4)
            if min_score is None or score >= min_score:
                hits.append(Hit(text, str(meta["source"]), int(meta["index"]), str(meta.get("heading", "")), score))
        return hits

    def collections(self) -> dict[str, int]:
        """Collection name -> number of chunks."""
        client = self._open()
        out = {}
        for col in client.list_collections():
            name = col if isinstance(col, str) else col.name
            if name.startswith(COLLECTION_PREFIX):
                out[name[len(COLLECTION_PREFIX) :]] = client.get_collection(name).count()
        return out

    def drop(self, collection: str) -> bool:
        if self._collection(collection, create=False) is None:
            return False
        self._open().delete_collection(COLLECTION_PREFIX + collection)
        return True

    def _collection(self, name: str, create: bool) -> Any:
        if not NAME.fullmatch(name):
            raise CollectionName(f"collection name {name!r}: use 1-48 of a-z 0-9 _ -, starting with a letter or digit")
        client = self._open()
        full = COLLECTION_PREFIX + name
        if create:
            return client.get_or_create_collection(
                full, configuration={"hnsw": {"space": "cosine"}}, embedding_function=self.embedder.chroma_function()
            )
        from chromadb.errors import NotFoundError

        try:
            return client.get_collection(full, embedding_function=self.embedder.chroma_function())
        except NotFoundError:
            return None

    def _open(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client


def _embedded_text(chunk: Chunk) -> str:
    return f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text
