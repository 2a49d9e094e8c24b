"""Eviction, page-out and page-in: keeping every memory within its budgets.

Budgets are in resident tokens: one per memory and one across all of them. A memory's budget
bounds its prompt, so it counts what the last prompt spent on framing its pages (marks, dates,
the chat template) besides the pages themselves. When either budget is exceeded, unpinned pages are evicted by the replacement policy (pagetable.py) down to a
low-water mark, so that eviction, and with it a changed prompt, comes in bursts rather than
at every turn. A page is written to the store (swap.py) before it leaves: a page that cannot
be written stays. Page-out writes the victims together with the next dirty pages in line (one
store write has a fixed cost, each extra page adds little), so their eviction then writes
nothing. Writeback (Memory.flusher) writes a memory's dirty pages in the background once it
holds more than its low-water mark, as Linux's flusher threads do, so that an eviction, which
a chat turn waits for before its prompt, mostly finds its victims clean: a store write costs
10-20 ms, dropping a clean page's text microseconds.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import trio

from llmos.config import MemoryConfig
from llmos.kernel.memory.pagetable import Page, PageTable, Policy
from llmos.kernel.memory.stats import Latencies
from llmos.kernel.memory.swap import Stored, Swap

PAGE_CLUSTER = 8  # pages written together at a page-out (victims first, then the next in line)


class Pager:
    def __init__(
        self,
        config: MemoryConfig,
        policy: Policy,
        swap: Callable[[], Swap],
        tables: dict[str, PageTable],
        holder: dict[str, int],
        latency: Latencies,
    ) -> None:
        self.config = config
        self.policy = policy
        self._swap = swap  # the store, opened on first need
        self.tables = tables  # every memory, by name (registry.py owns them)
        self.holder = holder
        self.latency = latency
        self.clock = 0  # logical time of references

    @property
    def swap(self) -> Swap:
        return self._swap()

    async def open_store(self) -> None:
        """Open the store apart, so that its one-time start is not counted as paging."""
        if not self.swap.opened:
            await trio.to_thread.run_sync(self.swap.collection)

    def touch(self, page: Page) -> None:
        self.clock += 1
        page.touch(self.clock)

    def resident_tokens(self) -> int:
        return sum(t.resident_tokens for t in self.tables.values())

    # -- eviction ------------------------------------------------------------------------

    async def enforce(self, table: PageTable, protect: set[int], fresh: set[int] | None = None, own: bool = True) -> int:
        """Evict until the memory (unless not `own`: a chat turn fits its own prompt, see
        Memory._fit) and all memories together are within budget; returns how many pages left.
        `protect` pages (of `table`) stay; `fresh` ones (this operation's, default: `protect`)
        are not written along."""
        fresh = protect if fresh is None else fresh
        low = self.config.low_water
        evicted = 0
        used = table.resident_tokens + table.framing
        if own and used > table.budget:
            need = used - int(table.budget * low)
            candidates = [p for p in table.resident() if not p.pinned and p.number not in protect]
            evicted += await self._evict(candidates, need, table, fresh)
        total = self.resident_tokens()
        if total > self.config.global_budget:
            need = total - int(self.config.global_budget * low)
            candidates = [
                p
                for t in self.tables.values()
                for p in t.resident()
                if not p.pinned and not (t is table and p.number in protect)
            ]
            evicted += await self._evict(candidates, need, table, fresh)
        return evicted

    async def _evict(self, candidates: list[Page], need: int, table: PageTable, fresh: set[int]) -> int:
        victims = self.policy.victims(candidates, need)
        await self._page_out(victims, table, fresh)
        return len(victims)

    async def evict(self, table: PageTable, victims: list[Page], fresh: set[int]) -> int:
        """Evict these pages of `table` (chosen by the caller); returns how many left."""
        await self._page_out(victims, table, fresh)
        return len(victims)

    async def _page_out(self, victims: list[Page], table: PageTable, fresh: set[int]) -> None:
        """Write what the store lacks, memory by memory; only a written page leaves. The
        operation's own new pages (`fresh`, in `table`) are not written along: if the
        operation fails they are forgotten, and the store must not keep them. Each page out
        is timed per page evicted: a clean page's costs next to nothing."""
        by_memory: dict[str, list[Page]] = {}
        for page in victims:
            by_memory.setdefault(page.memory, []).append(page)
        for name, pages in by_memory.items():
            started = time.perf_counter()
            owned = self.tables[name]
            dirty = [p for p in pages if not p.stored]
            if dirty:
                skip = {p.number for p in pages} | (fresh if owned is table else set())
                dirty += _cluster(owned, skip, PAGE_CLUSTER - len(dirty))
            await self.write(owned, dirty)
            for page in pages:
                drop_text(page)
                owned.page_outs += 1
            per_page = (time.perf_counter() - started) * 1000 / len(pages)
            self.latency.page_out.extend([per_page] * len(pages))

    # -- writeback -----------------------------------------------------------------------

    def wants_writeback(self, table: PageTable) -> bool:
        """The memory is past its low-water mark: its next pages are the next eviction's."""
        low = self.config.low_water
        return (
            table.resident_tokens + table.framing > table.budget * low
            or self.resident_tokens() > self.config.global_budget * low
        )

    def dirty(self, table: PageTable, skip: set[int]) -> list[tuple[Page, Page]]:
        """The resident pages the store lacks, oldest first, each with a copy: what a writeback
        writes, taken under the memory lock so that the write (outside it) sees them as they
        were."""
        return [(p, copy.copy(p)) for p in table.resident() if not p.stored and not p.pinned and p.number not in skip]

    async def write_back(self, table: PageTable, pages: list[Page]) -> None:
        """Write page copies (from `dirty`) without the memory lock; timed per page."""
        started = time.perf_counter()
        await self.write(table, pages, mark=False)
        per_page = (time.perf_counter() - started) * 1000 / len(pages)
        self.latency.writeback.extend([per_page] * len(pages))

    async def write(self, table: PageTable, pages: list[Page], mark: bool = True) -> None:
        if not pages:
            return
        await self.open_store()
        vectors = [table.index.vector(p.number) for p in pages]
        await trio.to_thread.run_sync(self.swap.write, table.name, self.holder.get(table.name, 0), pages, vectors)
        if mark:
            for page in pages:
                page.stored = True

    # -- page-in -------------------------------------------------------------------------

    async def page_in(self, table: PageTable, pages: list[Page], recalled: bool = True) -> None:
        """Read evicted pages back into RAM; they take the last places of the prompt, in history
        order. On failure nothing changed."""
        if not pages:
            return
        await self.open_store()
        started = time.perf_counter()
        found = await trio.to_thread.run_sync(self.swap.read, table.name, [p.number for p in pages])
        for stored in found:
            self._resident(table, table.pages[stored.number], stored, recalled)
        table.enter([table.pages[s.number] for s in found])
        per_page = (time.perf_counter() - started) * 1000 / len(pages)
        self.latency.page_in.extend([per_page] * len(pages))

    def _resident(self, table: PageTable, page: Page, stored: Stored, recalled: bool) -> None:
        page.text, page.resident, page.recalled = stored.text, True, recalled
        table.page_ins += 1
        self.touch(page)


def _cluster(table: PageTable, skip: set[int], room: int) -> list[Page]:
    """Dirty pages written along with the victims, oldest first: they are the likeliest next
    victims, and one store write of several pages costs little more than one of a single page
    (Linux clusters swap writes for the same reason). Their eviction then writes nothing."""
    if room <= 0:
        return []
    return [p for p in table.resident() if not p.stored and not p.pinned and p.number not in skip][:room]


def drop_text(page: Page) -> None:
    """The page leaves RAM (the store has it): its text goes, its index entry stays."""
    page.text = None
    page.resident, page.recalled = False, False
