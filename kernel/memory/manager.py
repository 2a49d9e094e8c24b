"""The memory manager: every process's context window as pages, kept within budgets.

This is the face the kernel and the syscalls see; each job lives in its own module:

  registry.py   named memories and their holders; what happens at exit and shutdown
  pagetable.py  pages, a memory's page table, the replacement policies
  index.py      every page's embedding and words, for search
  ranking.py    fault ranking: which pages matter to a turn or a query, and why
  turn.py       a chat turn: what it admits to the prompt; recent working set vs recalled
  prompt.py     turn assembly: pages as chat messages
  pager.py      eviction, page-out, page-in, within budgets
  swap.py       the store evicted pages live in (chromadb)
  stats.py      latency statistics

A chat turn (`begin_turn` ... `end_turn`): the new messages become pages; the pages most
relevant to them are admitted to the prompt (evicted ones paged back in, appended after the
pages already resident and marked as recalled, so the prompt keeps its prefix and the engine
reuses the process's KV) beside the newest pages; budgets are enforced; the prompt is
assembled and held to the memory's budget, counted with the model's chat template. The model's reply is stored when the turn ends (or, with remember=false, the turn
is forgotten). Every operation holds one lock (memory operations are short, and the embedder
runs one at a time anyway), so page states never change under an operation's feet. The one
exception is writeback (`flusher`, a kernel task): it copies a memory's dirty pages under the
lock, writes them to the store without it, and takes the lock again to mark the pages that are
still there as stored, so that a turn never waits on a background write.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

import trio

from llmos.config import MemoryConfig
from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.memory.index import content_words
from llmos.kernel.memory.pager import Pager, drop_text
from llmos.kernel.memory.pagetable import Page, PageTable, cut, make_policy
from llmos.kernel.memory.prompt import RECALLED, Framing, Messages, assemble, plain_chat
from llmos.kernel.memory.ranking import Query, Score, Weights, rank
from llmos.kernel.memory.registry import MemoryBusy, Registry
from llmos.kernel.memory.stats import Latencies, p99, percentile
from llmos.kernel.memory.swap import Swap
from llmos.kernel.memory.turn import Recalled, Turn, admit, newest, sticky
from llmos.kernel.memory.when import periods

__all__ = ["Memory", "MemoryBusy", "MemoryConfig", "NoSuchPage", "OverBudget", "RECALLED", "Recalled", "Turn", "p99", "percentile"]


class NoSuchPage(LookupError):
    pass


class OverBudget(RuntimeError):
    pass


class Memory:
    def __init__(
        self,
        encode: Callable[[str], list[int]],
        decode: Callable[[list[int]], str],
        embedder: Embedder,
        config: MemoryConfig | None = None,
        encode_chat: Callable[[Messages], list[int]] | None = None,
    ) -> None:
        """`encode_chat`: the model's chat template (Backend.encode_chat), by which prompts are
        held to their budget; without it, the backend's plain fallback format."""
        self.config = config or MemoryConfig()
        self.encode = encode
        self.decode = decode
        self.framing = Framing(encode, encode_chat or plain_chat(encode))
        self.embedder = embedder
        self.policy = make_policy(self.config.policy)
        self.lock = trio.Lock()
        self.latency = Latencies()
        self.turns: dict[int, Turn] = {}  # the open chat turn of each process that has one
        self._swap: Swap | None = None
        self.pager = Pager(self.config, self.policy, lambda: self.swap, {}, {}, self.latency)
        self.registry = Registry(self.config.budget, self.config.low_water, self.pager, self.lock)
        self._writeback_wanted = trio.Event()
        self._writing = trio.Lock()  # held by a writeback from its copies to its marks; close waits for it

    @property
    def swap(self) -> Swap:
        """The store, created on first need: a kernel that never evicts never opens chromadb."""
        if self._swap is None:
            self._swap = Swap(self.embedder, self.config.chroma_url, self.config.chroma_path)
        return self._swap

    @property
    def weights(self) -> Weights:
        c = self.config
        return Weights(
            c.dense_weight, c.lexical_weight, c.time_weight, c.neighbour_share, c.min_relevance, c.min_lexical,
            close_hits=c.neighbour_hits,
        )

    @property
    def tables(self) -> dict[str, PageTable]:
        return self.registry.tables

    @property
    def memory_of(self) -> dict[int, str]:
        return self.registry.memory_of

    @property
    def errors(self):  # failures of background work, for the log
        return self.registry.errors

    def table(self, pid: int) -> PageTable:
        """The process's memory; an anonymous one is made on first use."""
        return self.registry.table(pid)

    def resident_tokens(self) -> int:
        return self.pager.resident_tokens()

    async def open_store(self) -> None:
        await self.pager.open_store()

    # -- storing -------------------------------------------------------------------------

    async def store(self, pid: int, role: str, text: str, pinned: bool = False, said: float | None = None) -> tuple[list[Page], int]:
        """Append one message (said at `said`, default now) to the process's memory; returns its
        pages and how many pages were evicted to make room. If the evictions fail, the message
        is not stored."""
        async with self.lock:
            table = self.table(pid)
            pages = await self._append(table, [(role, text, pinned)], said)
            try:
                evicted = await self.pager.enforce(table, protect=set(), fresh={p.number for p in pages})
            except BaseException:
                await self._forget(table, pages)
                raise
            return pages, evicted

    async def _append(self, table: PageTable, messages: list[tuple[str, str, bool]], said: float | None = None) -> list[Page]:
        cuts = [cut(text, self.config.page_tokens, self.encode, self.decode) for _, text, _ in messages]
        new_pinned = sum(n for (_, _, pinned), pieces in zip(messages, cuts) if pinned for _, n in pieces)
        if new_pinned and table.pinned_tokens + new_pinned > table.budget:
            raise OverBudget(
                f"pinning {new_pinned} more tokens would exceed the memory budget "
                f"({table.pinned_tokens} pinned of {table.budget})"
            )
        vectors = await self._embed([text for pieces in cuts for text, _ in pieces])
        pages: list[Page] = []
        for (role, _, pinned), pieces in zip(messages, cuts):
            texts, counts = [t for t, _ in pieces], [n for _, n in pieces]
            pages += table.add(role, texts, counts, vectors[: len(texts)], pinned, said)
            vectors = vectors[len(texts) :]
        for page in pages:
            self.pager.touch(page)
        if self.pager.wants_writeback(table):
            self._writeback_wanted.set()
        return pages

    # -- writeback -----------------------------------------------------------------------

    async def flusher(self) -> None:
        """Write dirty pages back ahead of their eviction, whenever a memory has passed its
        low-water mark (pager.py). The kernel runs it as a task for as long as it runs."""
        while True:
            await self._writeback_wanted.wait()
            self._writeback_wanted = trio.Event()
            await self.writeback()

    async def writeback(self) -> int:
        """One writeback round: every memory past its mark writes its dirty pages, except those
        of an open turn (which may yet be forgotten). Returns how many pages were written. A
        failed write is logged; its pages stay dirty, and their eviction writes them."""
        async with self._writing:
            async with self.lock:
                turns: dict[str, set[int]] = {}
                for pid, turn in self.turns.items():
                    turns.setdefault(self.memory_of.get(pid, ""), set()).update(turn.pages)
                jobs = [(t, self.pager.dirty(t, turns.get(t.name, set()))) for t in self.tables.values() if self.pager.wants_writeback(t)]
            written: list[tuple[PageTable, list[Page]]] = []
            for table, pairs in jobs:
                if not pairs:
                    continue
                try:
                    await self.pager.write_back(table, [copied for _, copied in pairs])
                except Exception as exc:  # a background task must never take the kernel down
                    self.errors.append(f"writing back memory {table.name}: {exc}")
                    continue
                written.append((table, [page for page, _ in pairs]))
            async with self.lock:
                for table, pages in written:
                    await self._mark_written(table, pages)
            return sum(len(pages) for _, pages in written)

    async def _mark_written(self, table: PageTable, pages: list[Page]) -> None:
        """The written pages are stored now, if they are still there; a page forgotten
        meanwhile (or a memory dropped) must not stay in the store."""
        gone = []
        dropped = self.tables.get(table.name) is not table
        for page in pages:
            now = table.pages.get(page.number)
            if dropped or now is None:
                gone.append(page.number)
            elif now is page and not page.pinned:  # pinned meanwhile: the store's entry says unpinned
                page.stored = True
            # (a number taken by another page meanwhile cannot be: only an open turn's pages, never
            # written back, are ever forgotten while their memory lives)
        if gone:
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(self.swap.delete, table.name, gone)
                except Exception as exc:
                    self.errors.append(f"forgetting pages {gone} of memory {table.name}: {exc}")

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        started = time.perf_counter()
        vectors = await trio.to_thread.run_sync(self.embedder.embed, texts)
        per_text = (time.perf_counter() - started) * 1000 / max(1, len(texts))
        self.latency.embed.extend([per_text] * len(texts))
        return vectors

    # -- a chat turn ---------------------------------------------------------------------

    async def begin_turn(self, pid: int, messages: list[dict[str, str]], remember: bool = True) -> Turn:
        """Open the process's chat turn: store its messages, admit what they need, enforce
        budgets, and build the prompt, which never exceeds the memory's budget. On failure
        nothing is changed: the turn is not stored. A process has one turn open at a time
        (MemoryBusy)."""
        async with self.lock:
            if pid in self.turns:
                raise MemoryBusy(f"process {pid} already has a mem.chat turn in progress")
            table = self.table(pid)
            began = time.perf_counter()
            new = await self._append(table, [(m["role"], m["content"], m["role"] == "system") for m in messages])
            faulted: list[Page] = []
            try:
                dated = table.dated
                asked = [p for p in new if not p.pinned]
                pinned = [p for p in table.resident() if p.pinned]
                base = self.framing.count(assemble(pinned + asked, dated))
                if base > table.budget:
                    raise OverBudget(
                        f"the turn ({sum(p.tokens for p in asked)} tokens) does not fit the memory budget "
                        f"({table.budget} tokens; with the {table.pinned_tokens} pinned, the prompt would be {base})"
                    )
                started = time.perf_counter()
                query = self._query(table, asked or new)
                fresh = {p.number for p in new}
                room = table.budget - base
                cost = self._cost(table, dated)
                # the working set first, in a room of its own, so that it stays put while the
                # relevant pages change (it starts the part of the prompt that follows the pinned)
                recent = newest(table, int(room * self.config.recent_share), fresh, cost)
                working = {p.number for p in recent}
                ranked = rank(table, table.index, query, self.weights, fresh)
                opener = next((s.page for s in ranked if s.page.recalled or not s.page.resident), None)
                block = self.framing.block(opener) if opener is not None else 0  # the recalled block's own frame
                left = room - sum(cost(p) for p in recent) - block
                chosen = admit(
                    sticky(ranked, self.config.resident_bonus), left, lambda p: 0 if p.number in working else cost(p)
                )
                faulted = [s.page for s in chosen if not s.page.resident]
                await self.pager.page_in(table, faulted)
                table.enter(asked)  # the turn's messages end the prompt, after what the fault brought
                for score in chosen:
                    score.page.why = score
                    if score.page not in faulted:
                        self.pager.touch(score.page)
                fault_ms = (time.perf_counter() - started) * 1000
                self.latency.fault.append(fault_ms)
                protect = fresh | working | {s.page.number for s in chosen}
                evicted = await self.pager.enforce(table, protect=protect, fresh=fresh, own=False)
                order, prompt, prompt_tokens, dropped = await self._fit(table, dated, fresh, protect, chosen, recent)
                evicted += len(dropped)
            except BaseException:
                for page in faulted:  # clean pages: the store still has them
                    drop_text(page)
                await self._forget(table, new)
                raise
            table.faults += sum(p.resident for p in faulted)
            self.latency.turn.append((time.perf_counter() - began) * 1000)
            turn = Turn(
                pid=pid,
                remember=remember,
                prompt=prompt,
                pages=[p.number for p in new],
                faulted=[p.number for p in faulted if p.resident],
                evicted=evicted,
                prompt_pages=[p.number for p in order],
                recalled=[Recalled(s.page, s.page.text or "", s.page in faulted, s) for s in chosen if s.page.resident],
                fault_ms=fault_ms,
                prompt_tokens=prompt_tokens,
            )
            self.turns[pid] = turn
            return turn

    def _cost(self, table: PageTable, dated: bool) -> Callable[[Page], int]:
        """What a page would add to this turn's prompt (prompt.py, Framing.cost)."""

        def cost(page: Page) -> int:
            before = table.pages.get(page.number - 1)
            starts = before is None or before.message != page.message
            return self.framing.cost(page, page.recalled or not page.resident, dated, starts)

        return cost

    async def _fit(
        self, table: PageTable, dated: bool, fresh: set[int], protect: set[int], chosen: list[Score], recent: list[Page]
    ) -> tuple[list[Page], list[dict[str, str]], int, list[Page]]:
        """Assemble the prompt and hold it to the memory's budget exactly: while the model's
        count of it is over, evict the pages this turn does not need, last in the prompt first
        (the engine then prefills the least again: a page evicted early in the prompt would
        make it prefill everything after it), then the oldest of the working set, then the
        least relevant admitted pages; the pinned pages and the turn always fit (checked
        before). Only what must go goes: a page this turn does not need stays where it is while
        there is room. Returns the prompt's pages, the prompt, its tokens, and the pages evicted."""
        order = table.in_prompt_order()
        prompt = assemble(order, dated)
        tokens = self.framing.count(prompt)
        dropped: list[Page] = []
        if tokens > table.budget:
            gone: set[int] = set()
            free = [p for p in order if not p.pinned and p.number not in protect]
            tiers = [sorted(recent, key=lambda p: p.number), [s.page for s in reversed(chosen) if s.page.number not in fresh]]
            while tokens > table.budget:
                excess = tokens - table.budget
                free = [p for p in free if p.number not in gone]
                if free:
                    victims = _first_freeing(list(reversed(free)), excess)
                else:
                    tier = next(([p for p in t if p.number not in gone] for t in tiers if any(p.number not in gone for p in t)), [])
                    if not tier:
                        break  # only the pinned pages and the turn are left, and they fit (checked)
                    victims = _first_freeing(tier, excess)
                gone |= {p.number for p in victims}
                dropped += victims
                order = [p for p in order if p.number not in gone]
                prompt = assemble(order, dated)
                tokens = self.framing.count(prompt)
            await self.pager.evict(table, dropped, fresh)
        table.framing = max(0, tokens - sum(p.tokens for p in order))
        return order, prompt, tokens, dropped

    async def end_turn(self, pid: int, reply: str | None) -> list[Page]:
        """Close the process's turn: the model's reply joins the memory (none: the model gave
        none), or, for a turn not to be remembered, the turn's pages are forgotten (what it
        paged in stays). Budgets are not enforced here but before the next prompt is built, so
        a finished reply never waits on (or fails with) the store. Safe to call when cancelled."""
        turn = self.turns.pop(pid, None)
        if turn is None:
            return []
        if not turn.remember:
            with trio.CancelScope(shield=True):  # even a killed process leaves nothing behind
                await self.forget(pid, turn.pages)
            return []
        if not reply:
            return []
        async with self.lock:
            return await self._append(self.table(pid), [("assistant", reply, False)])

    async def forget(self, pid: int, numbers: list[int]) -> None:
        """Take pages out of the memory again (a turn that was not to be remembered)."""
        async with self.lock:
            table = self.table(pid)
            await self._forget(table, [table.pages[n] for n in numbers if n in table.pages])

    async def _forget(self, table: PageTable, pages: list[Page]) -> None:
        table.remove(pages)
        stored = [p.number for p in pages if p.stored]
        if stored:  # written along by another process's eviction: the store must not keep them
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(self.swap.delete, table.name, stored)
                except Exception as exc:
                    self.errors.append(f"forgetting pages {stored} of memory {table.name}: {exc}")

    def _query(self, table: PageTable, pages: list[Page]) -> Query:
        vectors = [v for v in (table.index.vectors.get(p.number) for p in pages) if v is not None]
        vector = sum(vectors[1:], vectors[0].copy()) if vectors else None
        if vector is not None and len(vectors) > 1:
            vector /= float((vector @ vector) ** 0.5) or 1.0
        text = " ".join(p.text or "" for p in pages)
        return Query(vector.tolist() if vector is not None else [], content_words(text), periods(text))

    # -- explicit requests ---------------------------------------------------------------

    async def recall(self, pid: int, query: str, k: int, page_in: bool = True) -> list[Recalled]:
        """The `k` pages most relevant to `query`, resident or not, best first; evicted ones
        are paged back in (within budget) unless `page_in` is false."""
        async with self.lock:
            table = self.table(pid)
            vector = (await self._embed([query]))[0]
            weights = Weights(**{**self.weights.__dict__, "neighbour": 0.0, "close_hits": 0, "min_similarity": -1.0})
            best = rank(table, table.index, Query(vector, content_words(query), periods(query)), weights, set())[:k]
            evicted = [s.page for s in best if not s.page.resident]
            texts: dict[int, str] = {}
            if evicted:
                await self.pager.open_store()
                stored = await trio.to_thread.run_sync(self.swap.read, table.name, [p.number for p in evicted])
                texts = {s.number: s.text for s in stored}
            room = table.budget - table.pinned_tokens
            brought = []
            for page in evicted:
                if page_in and page.tokens <= room:
                    brought.append(page)
                    room -= page.tokens
            hits = [Recalled(s.page, s.page.text or texts.get(s.page.number, ""), s.page in brought, s) for s in best]
            for score in best:
                score.page.why = score
                if score.page.resident:
                    self.pager.touch(score.page)
            if brought:
                await self.pager.page_in(table, brought)
                try:
                    await self.pager.enforce(table, protect={p.number for p in brought})
                except BaseException:
                    for page in brought:
                        drop_text(page)
                    raise
            return hits

    async def pin(self, pid: int, numbers: list[int]) -> list[Page]:
        async with self.lock:
            table = self.table(pid)
            pages = self._pages(table, numbers)
            adding = sum(p.tokens for p in pages if not p.pinned)
            if table.pinned_tokens + adding > table.budget:
                raise OverBudget(
                    f"pinning {adding} more tokens would exceed the memory budget "
                    f"({table.pinned_tokens} pinned of {table.budget})"
                )
            brought = [p for p in pages if not p.resident]
            await self.pager.page_in(table, brought, recalled=True)
            pinned = [p for p in pages if not p.pinned]
            for page in pinned:
                page.pinned, page.stored = True, False  # the stored entry says unpinned
            try:
                await self.pager.enforce(table, protect=set())
            except BaseException:
                for page in pinned:
                    page.pinned = False
                for page in brought:
                    drop_text(page)
                raise
            return pages

    async def unpin(self, pid: int, numbers: list[int]) -> list[Page]:
        """Unpinned pages stay resident until the policy picks them: nothing to evict now."""
        async with self.lock:
            table = self.table(pid)
            pages = self._pages(table, numbers)
            for page in pages:
                if page.pinned:
                    page.pinned, page.stored = False, False
            return pages

    def _pages(self, table: PageTable, numbers: list[int]) -> list[Page]:
        missing = [n for n in numbers if n not in table.pages]
        if missing:
            raise NoSuchPage(f"memory {table.name} has no page {', '.join(map(str, missing))}")
        return [table.pages[n] for n in dict.fromkeys(numbers)]

    async def set_budget(self, pid: int, tokens: int) -> PageTable:
        async with self.lock:
            table = self.table(pid)
            if tokens < table.pinned_tokens:
                raise OverBudget(f"{table.pinned_tokens} tokens are pinned; the budget cannot be lower")
            old, table.budget = table.budget, tokens
            try:
                await self.pager.enforce(table, protect=set())
            except BaseException:
                table.budget = old
                raise
            return table

    async def sync(self, pid: int) -> int:
        """Write every page the store lacks (msync): a named memory then survives a crash."""
        async with self.lock:
            table = self.table(pid)
            dirty = [p for p in table.resident() if not p.stored]
            await self.pager.write(table, dirty)
            return len(dirty)

    # -- named memories, exit, shutdown --------------------------------------------------

    async def attach(self, pid: int, name: str) -> PageTable:
        """Make the named memory the process's own (registry.py)."""
        async with self.lock:
            return await self.registry.attach(pid, name)

    def release(self, pid: int) -> Callable[[], Awaitable[None]] | None:
        """The process exited: its open turn ends, and the store work left to do is returned
        (for a background task)."""
        self.turns.pop(pid, None)
        return self.registry.release(pid)

    async def close(self) -> None:
        """At kernel shutdown: named memories are written out, anonymous ones deleted. Free
        when memory was never used."""
        if self._swap is None:
            return
        async with self._writing, self.lock:
            await self.registry.close()


def _first_freeing(pages: list[Page], need: int) -> list[Page]:
    """The first of `pages` that free `need` tokens (at least one)."""
    chosen, freed = [], 0
    for page in pages:
        if chosen and freed >= need:
            break
        chosen.append(page)
        freed += page.tokens
    return chosen
