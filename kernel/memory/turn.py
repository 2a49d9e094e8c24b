"""A chat turn over a memory: which pages it admits to the prompt, and its bookkeeping.

A turn's room is the budget less the pinned pages and the turn itself. Of it, `recent_share`
is kept for the newest pages (the working set: what was just said), and the rest is filled
by relevance (ranking.py): the best pages first, resident or evicted, each taken if it still
fits, so that many short pages or a few long ones fill it alike; evicted ones are paged in
(the page fault). Both are protected while budgets are enforced. A process has at most one
turn open: from `begin_turn` until the model's reply is stored or the turn is forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def admit(ranked: list[Score], room: int) -> list[Score]:
    """The best pages that fit `room` tokens: by score, a page that does not fit is skipped."""
    chosen: list[Score] = []
    for score in ranked:
        if score.page.tokens <= room:
            chosen.append(score)
            room -= score.page.tokens
    return chosen


def newest(table: PageTable, room: int, skip: set[int]) -> list[Page]:
    """The newest resident unpinned pages that fit `room` tokens (the working set)."""
    chosen: list[Page] = []
    for page in reversed(table.resident()):
        if page.pinned or page.number in skip:
            continue
        if page.tokens > room:
            break
        chosen.append(page)
        room -= page.tokens
    return chosen
