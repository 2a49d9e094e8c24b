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
from typing import Callable

from llmos.kernel.memory.index import Index
from llmos.kernel.memory.pagetable import Page, PageTable
from llmos.kernel.memory.when import Period

RRF_K = 60  # the constant of reciprocal rank fusion, as in the paper; ranks past ~k count little
LENDERS = 64  # the best hits whose neighbours are scored


@dataclass(frozen=True)
class Weights:
    dense: float = 1.0
    lexical: float = 1.0
    time: float = 1.0
    neighbour: float = 0.5  # the score of a page next to a hit, as a share of the hit's (half that two away)
    min_similarity: float = 0.3  # cosine at which a page is relevant on its own
    min_lexical: float = 0.5  # BM25, as a share of the best page's, at which a page is relevant on its own
    lexical_pool: int = 256  # the best BM25 pages looked at
    pool: int = 256  # the most similar pages looked at
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
    """The relevant pages and their neighbours, best first. Scores are kept for the best
    `pool` pages by similarity and every page a word or a period picks: no other page could
    be admitted before them."""
    import numpy as np  # here, not at import: the kernel boots without it

    numbers, similarity, times = index.dense(query.vector)
    eligible = np.array(
        [(p := table.pages.get(n)) is not None and not p.pinned and n not in exclude for n in numbers], dtype=bool
    )
    if not eligible.any():
        return []
    similarity = np.where(eligible, similarity, -np.inf)
    order = np.argsort(-similarity, kind="stable")[: int(eligible.sum())]
    dense_rank = np.empty(len(numbers), dtype=np.int64)
    dense_rank[order] = np.arange(1, len(order) + 1)
    scores: dict[int, Score] = {}

    def score_of(i: int) -> Score:
        n = numbers[i]
        score = scores.get(n)
        if score is None:
            score = scores[n] = Score(table.pages[n], dense=float(similarity[i]))
            if weights.dense > 0:
                score.dense_rank = int(dense_rank[i])
                score.fused += weights.dense / (RRF_K + score.dense_rank)
                score.relevant = score.dense >= weights.min_similarity
        return score

    for i in order[: weights.pool].tolist():
        score_of(i)
    row = {n: i for i, n in enumerate(numbers)}
    lexical = index.lexical(query.words, weights.lexical_pool, weights.max_word_share) if weights.lexical > 0 else {}
    lexical = {n: s for n, s in lexical.items() if n in row and eligible[row[n]]}
    best = max(lexical.values(), default=0.0)
    for r, (n, s) in enumerate(sorted(lexical.items(), key=lambda item: -item[1]), start=1):
        score = score_of(row[n])
        score.lexical, score.lexical_rank = s, r
        score.fused += weights.lexical / (RRF_K + r)
        score.relevant |= best > 0 and s >= weights.min_lexical * best
    if query.periods and weights.time > 0:
        inside = np.zeros(len(numbers), dtype=bool)
        for period in query.periods:
            inside |= period.within(times)
        for i in np.flatnonzero(inside & eligible)[: weights.pool].tolist():
            score = score_of(i)
            score.time = True
            score.fused += weights.time / (RRF_K + 1)
    for score in scores.values():
        score.score = score.fused if score.relevant else 0.0
    if weights.neighbour > 0:
        _neighbours(table, scores, weights.neighbour, weights.close_hits, lambda n: score_of(row[n]) if n in row and eligible[row[n]] else None)
    ranked = [s for s in scores.values() if s.score > 0]
    ranked.sort(key=lambda s: (-s.score, s.page.number))
    return ranked


def _neighbours(
    table: PageTable, scores: dict[int, Score], share: float, close: int, score_of: Callable[[int], Score | None]
) -> None:
    """A relevant page lends `share` of its score to the other pages of its message and to
    the messages beside it, and half that to the messages two away (a question, its answer,
    and the answer's follow-up). Only the best hits lend: the others' neighbours would rank
    past any budget."""
    by_message: dict[int, list[int]] = {}
    for n, p in table.pages.items():
        by_message.setdefault(p.message, []).append(n)
    hits = sorted((s for s in scores.values() if s.relevant), key=lambda s: -s.fused)[:LENDERS]
    for i, hit in enumerate(hits):
        m = hit.page.message
        for distance in (0, 1, 2):
            lent = hit.fused * (share if distance < 2 else share / 2)
            if i < close:  # right after the hit itself
                lent = hit.fused * (1 - 0.01 * (distance + 1))
            for n in by_message.get(m - distance, []) + (by_message.get(m + distance, []) if distance else []):
                other = score_of(n)
                if other is None or other is hit or other.score >= lent:
                    continue
                other.score, other.neighbour_of = lent, hit.page.number
