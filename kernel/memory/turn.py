"""A chat turn over a memory: which pages it admits to the prompt, and its bookkeeping.

A turn's room is the budget less the prompt of the pinned pages and the turn itself (as the
model's chat template frames them). Of it, `recent_share` is kept for the newest pages (the
working set: what was just said), and the rest is filled by relevance (ranking.py): the best
pages first, resident or evicted, each taken if it still fits, so that many short pages or a
few long ones fill it alike; evicted ones are paged in (the page fault). A page already in the
prompt ranks `resident_bonus` higher than its score, so that a page about as relevant as one
in place does not evict it (which would make the engine prefill again from there on). Each page is charged
what it adds to the prompt (prompt.py: its tokens and its share of marks and frames). Both are
protected while budgets are enforced; the assembled prompt is then held to the budget exactly. A process has at most one
turn open: from `begin_turn` until the model's reply is stored or the turn is forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from llmos.kernel.memory.pagetable import Page, PageTable
from llmos.kernel.memory.ranking import Score


@dataclass
class Recalled:
    """A page brought into a prompt or a recall by relevance, and why."""

    page: Page
    text: str
    paged_in: bool  # it was evicted and this brought it back
    why: Score

    @property
    def score(self) -> float:
        return self.why.score


@dataclass
class Turn:
    pid: int
    remember: bool  # false: the turn's pages are forgotten when it ends
    prompt: list[dict[str, str]]
    pages: list[int]  # pages the new messages went into
    faulted: list[int]  # pages paged back in for this turn
    evicted: int  # pages evicted to make room
    prompt_pages: list[int]  # the pages in the prompt, in prompt order
    recalled: list[Recalled] = field(default_factory=list)  # pages admitted by relevance
    fault_ms: float = 0.0  # ranking and paging in, before the prompt goes to the model
    prompt_tokens: int = 0  # the assembled prompt as the model gets it (never over the budget)


def admit(ranked: list[Score], room: int, cost: Callable[[Page], int] = lambda p: p.tokens) -> list[Score]:
    """The best pages that fit `room` tokens: by score, a page that does not fit is skipped."""
    chosen: list[Score] = []
    for score in ranked:
        need = cost(score.page)
        if need <= room:
            chosen.append(score)
            room -= need
    return chosen


def sticky(ranked: list[Score], bonus: float) -> list[Score]:
    """Admission order: by score, a page already in the prompt counted `bonus` higher. Between
    two pages about as relevant, the one in place stays: admitting the other would evict it, and
    the engine would prefill the prompt again from the evicted page on."""
    if bonus <= 0:
        return ranked
    return sorted(ranked, key=lambda s: (-s.score * (1 + bonus if s.page.resident else 1), s.page.number))


def newest(table: PageTable, room: int, skip: set[int], cost: Callable[[Page], int] = lambda p: p.tokens) -> list[Page]:
    """The newest resident unpinned pages that fit `room` tokens (the working set)."""
    chosen: list[Page] = []
    for page in reversed(table.resident()):
        if page.pinned or page.number in skip:
            continue
        need = cost(page)
        if need > room:
            break
        chosen.append(page)
        room -= need
    return chosen
