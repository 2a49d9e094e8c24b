"""Pages, the page table of one memory, and the replacement policies that choose victims.

A memory is everything a process has said and heard, in order, cut into pages of at most
`page_tokens` tokens. A page never spans two messages, so a page put back into a prompt is
still part of one well-formed chat message, and cuts fall between utterances (lines) and
sentences where they can, so a recalled page is a whole thought. A page is resident (its text
goes into the prompt) or evicted (its text lives only in the vector store, see swap.py).
Pinned pages never leave. Every page, resident or not, is in its memory's search index
(index.py).

A resident page also has a slot: when it entered RAM (stored, or paged back in). The prompt
lays the unpinned pages out by slot, so it grows at its end and a page keeps its place while it
stays resident: the engine reuses a process's retained KV up to the first change, and a
recalled page is appended instead of being put back at its place in the history, which would
change the prompt early at every fault.

Replacement policies see references, as a CPU's reference bits do. A page is referenced when
it is created, paged in, recalled, or relevant to the current turn; being in the prompt is not
a reference, since every resident page is in every prompt and LRU would decay to FIFO.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from llmos.abi.mem import PAGE_POLICIES
from llmos.kernel.memory.index import Index
from llmos.kernel.memory.when import day

if TYPE_CHECKING:
    from llmos.kernel.memory.ranking import Score

LRU_K = 2  # LRU-K looks at the K-th most recent reference (O'Neil et al.: K=2 does most of the good)
_WORDS = re.compile(r"\s*\S+|\s+")  # words with the whitespace before them, as BPE tokenizers see them
_LINES = re.compile(r"[^\n]*\n+|[^\n]+")  # utterances of a transcript, each with its line break
_SENTENCES = re.compile(r".*?(?:[.!?]+[\"')\]]*\s+|$)", re.S)  # sentences with the space after them


def cut(text: str, page_tokens: int, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]) -> list[tuple[str, int]]:
    """Cut one message into pages of at most `page_tokens` tokens: (text, tokens) each.
    Cuts fall between lines where they can, else between sentences, else between words, so
    the pages concatenate back to the message exactly and a page holds whole utterances;
    only a single word longer than a page is cut inside."""
    if not text:
        return []
    total = len(encode(text))
    if total <= page_tokens:
        return [(text, total)]
    pieces = [text]
    for pattern in (_LINES, _SENTENCES, _WORDS):  # finer and finer, only where still too long
        finer: list[str] = []
        for piece in pieces:
            finer += [piece] if len(encode(piece)) <= page_tokens else [s for s in pattern.findall(piece) if s]
        pieces = finer
    pages: list[tuple[str, int]] = []
    current, count = "", 0
    for piece in pieces:
        n = len(encode(piece))
        if count + n > page_tokens and current:
            pages.append((current, len(encode(current))))
            current, count = "", 0
        if n > page_tokens:
            pages.extend(_cut_word(piece, page_tokens, encode, decode))
            continue
        current += piece
        count += n
    if current:
        pages.append((current, len(encode(current))))
    return _fit(pages, page_tokens, encode, decode)


def _cut_word(word: str, page_tokens: int, encode, decode) -> list[tuple[str, int]]:
    ids = encode(word)
    pieces = []
    while ids:
        end = min(page_tokens, len(ids))
        # never split a multi-byte character between pages
        while end > 1 and end < len(ids) and decode(ids[:end]).endswith("\ufffd"):
            end -= 1
        pieces.append((decode(ids[:end]), end))
        ids = ids[end:]
    return pieces


def _fit(pages: list[tuple[str, int]], page_tokens: int, encode, decode) -> list[tuple[str, int]]:
    """Words counted one by one can merge into fewer tokens, rarely more: cut any page that
    came out over the limit."""
    out: list[tuple[str, int]] = []
    for text, n in pages:
        out.extend(_cut_word(text, page_tokens, encode, decode) if n > page_tokens else [(text, n)])
    return out


@dataclass(eq=False)  # a page is itself: compared by identity
class Page:
    memory: str  # name of the memory it belongs to
    number: int  # identity inside its memory, in creation order
    position: int  # token offset of its first token in the memory's whole history
    message: int  # index of the message it is part of
    role: str
    tokens: int
    text: str | None  # None while evicted: the text lives in the vector store only
    pinned: bool = False
    resident: bool = True
    recalled: bool = False  # paged back in: the prompt marks it as recalled memory
    stored: bool = False  # the store holds an up-to-date copy, so evicting it writes nothing
    created: float = field(default_factory=time.time)
    time: float = 0.0  # when its message was said (default: when it was stored)
    last_access: int = 0  # logical time of its latest reference
    accesses: int = 0
    history: deque[int] = field(default_factory=lambda: deque(maxlen=LRU_K))
    referenced: bool = False  # CLOCK's reference bit
    why: Score | None = None  # why a turn or a recall last admitted it by relevance
    slot: int = 0  # when it entered RAM: its place in the prompt (pinned pages aside)

    @property
    def key(self) -> tuple[str, int]:
        return (self.memory, self.number)

    def __post_init__(self) -> None:
        self.time = self.time or self.created

    def touch(self, now: int) -> None:
        self.last_access = now
        self.accesses += 1
        self.history.append(now)
        self.referenced = True


class PageTable:
    """The pages of one memory in creation order (which is also their order in the history)."""

    def __init__(self, name: str, budget: int, named: bool) -> None:
        self.name = name
        self.budget = budget  # resident tokens this memory may hold
        self.named = named  # named memories persist; anonymous ones die with their process
        self.pages: dict[int, Page] = {}
        self.next_number = 0
        self.next_message = 0
        self.next_position = 0
        self.next_slot = 0
        self.framing = 0  # tokens the last prompt spent beyond its pages' own (marks, chat template)
        self.faults = 0  # pages paged back in because a turn needed them
        self.page_ins = 0  # all pages brought back in (faults, recall, pin)
        self.page_outs = 0  # pages evicted
        self.index = Index()  # every page's embedding and words, for ranking

    def add(
        self, role: str, texts: list[str], counts: list[int], vectors: list[list[float]], pinned: bool, said: float | None = None
    ) -> list[Page]:
        """One message, already cut into pages, appended at the end of the history."""
        message = self.next_message
        self.next_message += 1
        added = []
        for text, tokens, vector in zip(texts, counts, vectors):
            page = Page(self.name, self.next_number, self.next_position, message, role, tokens, text, pinned)
            if said is not None:
                page.time = said
            self.pages[page.number] = page
            self.index.add(page.number, text, vector, page.time)
            self.next_number += 1
            self.next_position += tokens
            added.append(page)
        self.enter(added)
        return added

    def enter(self, pages: list[Page]) -> None:
        """The pages (again) take the last places of the prompt, in history order."""
        for page in sorted(pages, key=lambda p: p.number):
            page.slot = self.next_slot
            self.next_slot += 1

    def remove(self, pages: list[Page]) -> None:
        """Forget pages (a turn not to be remembered, or one whose store failed)."""
        for page in pages:
            self.pages.pop(page.number, None)
        self.index.remove([p.number for p in pages])
        self.next_number = max(self.pages, default=-1) + 1
        self.next_message = max((p.message for p in self.pages.values()), default=-1) + 1
        self.next_position = max((p.position + p.tokens for p in self.pages.values()), default=0)

    def restore(self, page: Page, text: str, vector: list[float]) -> None:
        """Re-enter a page found in the store (a memory attached after a restart)."""
        self.pages[page.number] = page
        self.index.add(page.number, text, vector, page.time)
        self.next_number = max(self.next_number, page.number + 1)
        self.next_message = max(self.next_message, page.message + 1)
        self.next_position = max(self.next_position, page.position + page.tokens)
        self.enter([page])

    def resident(self) -> list[Page]:
        return [p for p in self.pages.values() if p.resident]

    def evicted(self) -> list[Page]:
        return [p for p in self.pages.values() if not p.resident]

    @property
    def resident_tokens(self) -> int:
        return sum(p.tokens for p in self.pages.values() if p.resident)

    @property
    def pinned_tokens(self) -> int:
        return sum(p.tokens for p in self.pages.values() if p.pinned)

    def in_prompt_order(self) -> list[Page]:
        """Pinned pages first, in history order, then the other resident pages in the order
        they entered RAM (a page paged back in comes after those already there)."""
        resident = self.resident()
        return [p for p in resident if p.pinned] + sorted((p for p in resident if not p.pinned), key=lambda p: p.slot)

    @property
    def dated(self) -> bool:
        """The memory spans more than one day: its prompts date each day. A property of the
        memory, not of one prompt, so that paging a page in or out does not re-date the rest."""
        times = [p.time for p in self.pages.values() if not p.pinned]
        return bool(times) and day(min(times)) != day(max(times))


# -- replacement policies ------------------------------------------------------------------


class Policy(Protocol):
    name: str

    def victims(self, candidates: list[Page], need: int) -> list[Page]:
        """Pages to evict from `candidates` (resident, unpinned) to free at least `need`
        tokens, or all of them if they hold fewer."""
        ...


def _take(ordered: list[Page], need: int) -> list[Page]:
    chosen, freed = [], 0
    for page in ordered:
        if freed >= need:
            break
        chosen.append(page)
        freed += page.tokens
    return chosen


class LRU:
    """Least recently referenced first."""

    name = "lru"

    def victims(self, candidates: list[Page], need: int) -> list[Page]:
        return _take(sorted(candidates, key=lambda p: (p.last_access, p.key)), need)


class LRUK:
    """LRU-K (K=2): the page whose K-th most recent reference is oldest goes first; a page
    referenced fewer than K times counts as infinitely old. A page seen once (filler that
    streamed past) goes before a page that keeps being needed, even if it was seen later."""

    name = "lru-k"

    def victims(self, candidates: list[Page], need: int) -> list[Page]:
        def kth_reference(p: Page) -> int:
            return p.history[0] if len(p.history) >= LRU_K else -1

        return _take(sorted(candidates, key=lambda p: (kth_reference(p), p.last_access, p.key)), need)


class Clock:
    """CLOCK (second chance): a hand sweeps the pages in a fixed circular order; a page with
    its reference bit set loses the bit and is passed over, one without it is evicted."""

    name = "clock"

    def __init__(self) -> None:
        self.hand: tuple[str, int] | None = None  # key of the page the hand last stopped at

    def victims(self, candidates: list[Page], need: int) -> list[Page]:
        ring = sorted(candidates, key=lambda p: p.key)
        if not ring:
            return []
        start = next((i for i, p in enumerate(ring) if self.hand is None or p.key > self.hand), 0)
        chosen: list[Page] = []
        taken: set[tuple[str, int]] = set()
        freed = 0
        for step in range(2 * len(ring)):  # two sweeps clear every bit, so this always ends
            if freed >= need or len(chosen) == len(ring):
                break
            page = ring[(start + step) % len(ring)]
            if page.key in taken:
                continue
            self.hand = page.key
            if page.referenced:
                page.referenced = False
            else:
                chosen.append(page)
                taken.add(page.key)
                freed += page.tokens
        return chosen


POLICIES: dict[str, type] = dict(zip(PAGE_POLICIES, (LRU, LRUK, Clock), strict=True))  # names from the ABI


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown replacement policy {name!r}; choose one of {', '.join(POLICIES)}") from None
