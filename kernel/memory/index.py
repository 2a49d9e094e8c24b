"""The search index of every memory: each page's embedding and words, resident or evicted.

A page fault ranks all of a memory's pages, so the index keeps, in RAM, what ranking needs for
every page: its embedding (384 floats) and its words in a BM25 full-text index. The page's
text itself leaves RAM when the page is evicted; it lives in the store (swap.py).

Lexical relevance is BM25 from SQLite's FTS5 (Porter stemming), one in-memory table per
memory, so a memory's term statistics are its own. FTS5 adds and deletes pages one at a time
(~15 µs a page here) and answers a query over thousands of pages in a few ms. bm25s was
measured first: it has no incremental add, and rebuilding it costs 40-110 ms per 1,000 pages
on this machine, at every turn that added pages: more than a turn's whole fault budget (50 ms).
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from typing import TYPE_CHECKING

_STOPWORDS = frozenset(
    """a an the of in on at to is are was were be been by for with and or but not no yes it its
    this that these those i me my you your he him his she her they them their we us our what
    which who whom whose does do did has have had how when where why about from as than then
    there here so if into out up down over also just very can could would should will shall may
    might must one some any all please tell say said""".split()
)
_WORD = re.compile(r"[^\W_]+")
_tables = itertools.count()

if TYPE_CHECKING:
    import numpy as np


def content_words(text: str) -> list[str]:
    """Lower-cased words that carry meaning, in order, each once."""
    words = (w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1)
    return list(dict.fromkeys(words))


class Index:
    """One memory's pages for search: embeddings (dense) and an FTS5 table (lexical)."""

    _db: sqlite3.Connection | None = None  # one in-memory database for every memory's table

    def __init__(self) -> None:
        self.table = f"pages{next(_tables)}"
        self.vectors: dict[int, np.ndarray] = {}
        self.times: dict[int, float] = {}  # when each page's message was said
        self._matrix: tuple[list[int], np.ndarray, np.ndarray] | None = None  # numbers, stacked vectors, times
        self._created = False

    @classmethod
    def db(cls) -> sqlite3.Connection:
        if cls._db is None:
            cls._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        return cls._db

    def _ensure(self) -> None:
        if not self._created:
            self.db().execute(f"CREATE VIRTUAL TABLE {self.table} USING fts5(text, tokenize='porter unicode61')")
            self._created = True

    def __len__(self) -> int:
        return len(self.vectors)

    def add(self, number: int, text: str, vector: list[float] | np.ndarray, said: float = 0.0) -> None:
        import numpy as np  # here, not at import: the kernel boots without it

        self._ensure()
        self.db().execute(f"INSERT OR REPLACE INTO {self.table}(rowid, text) VALUES (?, ?)", (number, text))
        replaced = number in self.vectors
        self.vectors[number] = np.asarray(vector, dtype=np.float32)
        self.times[number] = said
        if self._matrix is not None and not replaced:  # appended, as pages are: grow the matrix
            numbers, matrix, times = self._matrix
            self._matrix = (numbers + [number], np.vstack([matrix, self.vectors[number]]), np.append(times, said))
        else:
            self._matrix = None

    def remove(self, numbers: list[int]) -> None:
        numbers = [n for n in numbers if n in self.vectors]
        if not numbers:
            return
        self.db().executemany(f"DELETE FROM {self.table} WHERE rowid = ?", [(n,) for n in numbers])
        for n in numbers:
            del self.vectors[n], self.times[n]
        if self._matrix is not None and self._matrix[0][-len(numbers) :] == sorted(numbers):
            kept = len(self._matrix[0]) - len(numbers)  # the newest pages (a turn forgotten): cut them off
            self._matrix = (self._matrix[0][:kept], self._matrix[1][:kept], self._matrix[2][:kept])
        else:
            self._matrix = None

    def drop(self) -> None:
        if self._created:
            self.db().execute(f"DROP TABLE IF EXISTS {self.table}")
            self._created = False
        self.vectors.clear()
        self.times.clear()
        self._matrix = None

    def vector(self, number: int) -> list[float] | None:
        v = self.vectors.get(number)
        return None if v is None else v.tolist()

    def dense(self, query: list[float]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Every page's number, cosine similarity to the query (embeddings are unit vectors),
        and time, in one order."""
        import numpy as np  # here, not at import: the kernel boots without it

        if not self.vectors:
            return [], np.zeros(0, dtype=np.float32), np.zeros(0)
        if self._matrix is None:
            numbers = list(self.vectors)
            self._matrix = (
                numbers, np.stack([self.vectors[n] for n in numbers]), np.array([self.times[n] for n in numbers])
            )
        numbers, matrix, times = self._matrix
        if not query:
            return numbers, np.zeros(len(numbers), dtype=np.float32), times
        return numbers, matrix @ np.asarray(query, dtype=np.float32), times

    def lexical(self, words: list[str], limit: int, max_share: float = 1.0) -> dict[int, float]:
        """BM25 of the pages that contain any of `words` (higher is better), the best `limit`.
        A word found in more than `max_share` of the pages (a speaker's name on every line of
        a transcript) tells nothing and is left out: BM25 would still rank its pages, by length.
        (Any word may be on a few pages: the query's own, and in a small memory a few more.)"""
        if not words or not self._created:
            return {}
        if max_share < 1.0 and self.vectors:
            most = max(max_share * len(self.vectors), 4)
            words = [w for w in words if self._pages_with(w) <= most]
            if not words:
                return {}
        query = " OR ".join(f'"{w}"' for w in words)
        rows = self.db().execute(
            f"SELECT rowid, bm25({self.table}) FROM {self.table} WHERE {self.table} MATCH ? "
            f"ORDER BY bm25({self.table}) LIMIT ?",
            (query, limit),
        ).fetchall()
        return {int(n): -float(score) for n, score in rows}  # FTS5's bm25 is negated: lower is better

    def _pages_with(self, word: str) -> int:
        row = self.db().execute(f"SELECT count(*) FROM {self.table} WHERE {self.table} MATCH ?", (f'"{word}"',)).fetchone()
        return int(row[0])
