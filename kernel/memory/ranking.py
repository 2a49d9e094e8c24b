"""Fault ranking: which pages of a memory matter to a turn or a query, and why.

Every unpinned page of the memory, resident or evicted, is scored on three signals:

  dense     cosine similarity of its embedding to the query's (all-MiniLM-L6-v2)
  lexical   BM25 of its words against the query's content words (index.py); names, numbers
            and rare words, which a small embedding model blurs, decide among look-alikes
  time      it was said within a period the query names ("in May 2023")

and they are fused by reciprocal rank fusion (Cormack et al. 2009: score = sum over the
signals of weight / (k + rank)), which needs no calibration between cosine and BM25 scales.
A page is relevant only if one signal vouches for it on its own (cosine or BM25 above a
floor), so a turn about nothing in particular pages in nothing. The pages next to a relevant
page (the rest of its message, the messages one and two away) inherit part of its score; those
of the best hit rank right after it: in a conversation the answer is often the reply to the
turn that names the topic ("We adopted a dog!" / "What kind?" / "A beagle mix").
"""

from __future__ import annotations

from dataclasses import dataclass

from llmos.kernel.memory.index import Index
from llmos.kernel.memory.pagetable import Page, PageTable
from llmos.kernel.memory.when import Period

RRF_K = 60  # the constant of reciprocal rank fusion, as in the paper; ranks past ~k count little


@dataclass(frozen=True)
class Weights:
    dense: float = 1.0
    lexical: float = 1.0
    time: float = 1.0
    neighbour: float = 0.5  # the score of a page next to a hit, as a share of the hit's (half that two away)
    min_similarity: float = 0.3  # cosine at which a page is relevant on its own
    min_lexical: float = 0.5  # BM25, as a share of the best page's, at which a page is relevant on its own
    lexical_pool: int = 256  # the best BM25 pages looked at
    max_word_share: float = 0.1  # a query word on more of the pages than this is not searched for
    close_hits: int = 1  # the best hits whose neighbours rank right after them


@dataclass
class Query:
    vector: list[float]
    words: list[str]
    periods: list[Period]


@dataclass
class Score:
    """Why a page ranks where it does."""

    page: Page
    dense: float = 0.0  # cosine similarity
    lexical: float = 0.0  # BM25 (0: shares no word with the query)
    dense_rank: int | None = None  # 1 = best
    lexical_rank: int | None = None
    time: bool = False  # said within a period the query names
    fused: float = 0.0  # reciprocal rank fusion of the signals
    relevant: bool = False  # a signal vouches for it on its own
    neighbour_of: int | None = None  # its score comes from this relevant page next to it
    score: float = 0.0  # what it is ranked by: fused, or its share of a neighbour's


def rank(table: PageTable, index: Index, query: Query, weights: Weights, exclude: set[int]) -> list[Score]:
    """The relevant pages and their neighbours, best first."""
    pages = {n: p for n, p in table.pages.items() if not p.pinned and n not in exclude and n in index.vectors}
    if not pages:
        return []
    scores = {n: Score(p) for n, p in pages.items()}
    dense = {n: s for n, s in index.dense(query.vector).items() if n in scores}
    for r, (n, s) in enumerate(sorted(dense.items(), key=lambda item: -item[1]), start=1):
        score = scores[n]
        score.dense, score.dense_rank = s, r
        score.fused += weights.dense / (RRF_K + r)
        score.relevant = s >= weights.min_similarity
    lexical = index.lexical(query.words, weights.lexical_pool, weights.max_word_share) if weights.lexical > 0 else {}
    lexical = {n: s for n, s in lexical.items() if n in scores}
    best = max(lexical.values(), default=0.0)
    for r, (n, s) in enumerate(sorted(lexical.items(), key=lambda item: -item[1]), start=1):
        score = scores[n]
        score.lexical, score.lexical_rank = s, r
        score.fused += weights.lexical / (RRF_K + r)
        score.relevant |= best > 0 and s >= weights.min_lexical * best
    if query.periods:
        for score in scores.values():
            if any(period.contains(score.page.time) for period in query.periods):
                score.time = True
                score.fused += weights.time / (RRF_K + 1)
    for score in scores.values():
        score.score = score.fused if score.relevant else 0.0
    if weights.neighbour > 0:
        _neighbours(table, scores, weights.neighbour, weights.close_hits)
    ranked = [s for s in scores.values() if s.score > 0]
    ranked.sort(key=lambda s: (-s.score, s.page.number))
    return ranked


def _neighbours(table: PageTable, scores: dict[int, Score], share: float, close: int) -> None:
    """A relevant page lends `share` of its score to the other pages of its message and to
    the messages beside it, and half that to the messages two away (a question, its answer,
    and the answer's follow-up)."""
    by_message: dict[int, list[int]] = {}
    for n, p in table.pages.items():
        by_message.setdefault(p.message, []).append(n)
    hits = sorted((s for s in scores.values() if s.relevant), key=lambda s: -s.fused)
    for i, hit in enumerate(hits):
        m = hit.page.message
        for distance in (0, 1, 2):
            lent = hit.fused * (share if distance < 2 else share / 2)
            if i < close:  # right after the hit itself
                lent = hit.fused * (1 - 0.01 * (distance + 1))
            for n in by_message.get(m - distance, []) + (by_message.get(m + distance, []) if distance else []):
                other = scores.get(n)
                if other is None or other is hit or other.score >= lent:
                    continue
                other.score, other.neighbour_of = lent, hit.page.number
