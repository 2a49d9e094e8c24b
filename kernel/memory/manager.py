"""The memory manager: every process's context window as pages, kept within budgets.

Each process has one memory, a page table (pagetable.py). By default it is anonymous: private,
and gone with the process, like anonymous memory and its swap slots. A process may instead
attach a named memory (`mem.attach`): its pages persist in the store and a later process,
in this kernel or after a restart, attaching the same name finds them again. A name is held by
one live process at a time, so no process ever reads pages it does not own.

Budgets are in resident tokens: one per memory and one across all of them. When either is
exceeded, unpinned pages are evicted by the replacement policy (to a low-water mark, so that
eviction, and with it a changed prompt, comes in bursts rather than at every turn) and
written to the store (swap.py) before they leave: a page that cannot be written stays.

A chat turn (`begin_turn`): the new messages become pages; pages relevant to them are
referenced; the evicted pages most relevant to them are paged back in (the page fault), in
their original place, marked as recalled; budgets are enforced; the prompt is assembled:
pinned pages, then resident pages in history order. The engine reuses a process's retained KV
for the longest common token prefix, so a changed page costs a prefill from the first changed
position on, never from scratch.

Every operation holds one lock (memory operations are short, and the embedder runs one at a
time anyway), so page states never change under an operation's feet.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Awaitable, Callable

import trio

from llmos.config import MemoryConfig
from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.memory.pagetable import Page, PageTable, cut, make_policy
from llmos.kernel.memory.swap import Stored, Swap, content_words, relevance

RECALLED = "[recalled memory] "  # what a paged-in page says before its text in the prompt
SEARCH_POOL = 32  # nearest pages fetched before re-ranking
PAGE_CLUSTER = 8  # pages written together at a page-out (victims first, then the next in line)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,63}")
LATENCY_SAMPLES = 4096


class NoSuchPage(LookupError):
    pass


class OverBudget(RuntimeError):
    pass


class MemoryBusy(RuntimeError):
    pass


@dataclass
class Turn:
    prompt: list[dict[str, str]]
    pages: list[int]  # pages the new messages went into
    faulted: list[int]  # pages paged back in for this turn
    evicted: int  # pages evicted to make room
    prompt_pages: list[int]  # the pages in the prompt, in prompt order


@dataclass
class Hit:
    page: Page
    text: str
    score: float
    paged_in: bool  # it was evicted and this recall brought it back


@dataclass
class Latencies:
    """Milliseconds per page, recent samples."""

    page_out: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    page_in: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    embed: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


def percentile(samples: deque[float] | list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def p99(samples: deque[float] | list[float]) -> float:
    return percentile(samples, 0.99)


class Memory:
    def __init__(
        self,
        encode: Callable[[str], list[int]],
        decode: Callable[[list[int]], str],
        embedder: Embedder,
        config: MemoryConfig | None = None,
    ) -> None:
        self.config = config or MemoryConfig()
        self.encode = encode
        self.decode = decode
        self.embedder = embedder
        self.policy = make_policy(self.config.policy)
        self.tables: dict[str, PageTable] = {}
        self.memory_of: dict[int, str] = {}  # pid -> name of its memory
        self.holder: dict[str, int] = {}  # name -> pid attached to it
        self.lock = trio.Lock()
        self.chatting: set[int] = set()  # pids with a mem.chat turn in progress
        self.latency = Latencies()
        self.errors: deque[str] = deque(maxlen=32)  # failures of background work (exit cleanup)
        self._clock = 0
        self._boot = secrets.token_hex(4)  # anonymous memories of different boots never meet
        self._swap: Swap | None = None

    @property
    def swap(self) -> Swap:
        """The store, created on first need: a kernel that never evicts never opens chromadb."""
        if self._swap is None:
            self._swap = Swap(self.embedder, self.config.chroma_url, self.config.chroma_path)
        return self._swap

    async def _open_store(self) -> None:
        """Open the store apart, so that its one-time start is not counted as paging."""
        await trio.to_thread.run_sync(self.swap.collection)

    def table(self, pid: int) -> PageTable:
        """The process's memory; an anonymous one is made on first use."""
        name = self.memory_of.get(pid)
        if name is None:
            name = f"anon-{self._boot}-{pid}"
            self.tables[name] = PageTable(name, self.config.budget, named=False)
            self.memory_of[pid], self.holder[name] = name, pid
        return self.tables[name]

    def resident_tokens(self) -> int:
        return sum(t.resident_tokens for t in self.tables.values())

    # -- storing -------------------------------------------------------------------------

    async def store(self, pid: int, role: str, text: str, pinned: bool = False) -> tuple[list[Page], int]:
        """Append one message to the process's memory; returns its pages and how many pages
        were evicted to make room. If the evictions fail, the message is not stored."""
        async with self.lock:
            table = self.table(pid)
            pages = await self._append(table, [(role, text, pinned)])
            try:
                evicted = await self._enforce(table, protect=set(), fresh={p.number for p in pages})
            except BaseException:
                await self._forget(table, pages)
                raise
            return pages, evicted

    async def add_reply(self, pid: int, text: str) -> list[Page]:
        """The model's reply joins the memory. Budgets are not enforced here but before the
        next prompt is built, so a finished reply never waits on (or fails with) the store."""
        if not text:
            return []
        async with self.lock:
            return await self._append(self.table(pid), [("assistant", text, False)])

    async def _append(self, table: PageTable, messages: list[tuple[str, str, bool]]) -> list[Page]:
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
            pages += table.add(role, texts, counts, vectors[: len(texts)], pinned)
            vectors = vectors[len(texts) :]
        for page in pages:
            self._touch(page)
        return pages

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        started = time.perf_counter()
        vectors = await trio.to_thread.run_sync(self.embedder.embed, texts)
        per_text = (time.perf_counter() - started) * 1000 / max(1, len(texts))
        self.latency.embed.extend([per_text] * len(texts))
        return vectors

    def _touch(self, page: Page) -> None:
        self._clock += 1
        page.touch(self._clock)

    # -- a chat turn ---------------------------------------------------------------------

    async def begin_turn(self, pid: int, messages: list[dict[str, str]]) -> Turn:
        """Store the turn's messages, page in what they need, enforce budgets, and build the
        prompt. On failure nothing is changed: the turn is not stored."""
        async with self.lock:
            table = self.table(pid)
            new = await self._append(table, [(m["role"], m["content"], m["role"] == "system") for m in messages])
            faulted: list[Page] = []
            try:
                turn_tokens = sum(p.tokens for p in new if not p.pinned)
                if table.pinned_tokens + turn_tokens > table.budget:
                    raise OverBudget(
                        f"the turn ({turn_tokens} tokens) does not fit the memory budget "
                        f"({table.budget} tokens, {table.pinned_tokens} pinned)"
                    )
                asking = [p for p in new if not p.pinned] or new
                vector = _mean([p.vector for p in asking if p.vector is not None])
                words = content_words(" ".join(p.text or "" for p in asking))
                self._reference(table, vector, words, skip=new)
                faulted = await self._fault(table, vector, words, turn_tokens)
                evicted = await self._enforce(table, protect={p.number for p in new + faulted})
            except BaseException:
                for page in faulted:  # clean pages: the store still has them
                    _drop_text(page)
                await self._forget(table, new)
                raise
            order = table.in_prompt_order()
            return Turn(
                prompt=self._prompt(order),
                pages=[p.number for p in new],
                faulted=[p.number for p in faulted],
                evicted=evicted,
                prompt_pages=[p.number for p in order],
            )

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

    def _reference(self, table: PageTable, vector: list[float], words: frozenset[str], skip: list[Page]) -> None:
        """Resident pages relevant to the turn count as referenced (for the policies)."""
        skipped = {p.number for p in skip}
        for page in table.resident():
            if page.number in skipped or page.vector is None or page.text is None:
                continue
            if relevance(_dot(vector, page.vector), words, page.text) >= self.config.min_relevance:
                self._touch(page)

    async def _fault(self, table: PageTable, vector: list[float], words: frozenset[str], turn_tokens: int) -> list[Page]:
        """Page back in the evicted pages most relevant to the turn that fit the budget."""
        if not table.evicted() or not vector:
            return []
        await self._open_store()
        started = time.perf_counter()
        room = table.budget - table.pinned_tokens - turn_tokens
        found = await self._search(table, vector, words)
        chosen: list[tuple[Page, Stored]] = []
        for score, stored in found:
            page = table.pages.get(stored.number)
            if score < self.config.min_relevance or len(chosen) >= self.config.fault_pages:
                break
            if page is None or page.resident or page.tokens > room:
                continue
            chosen.append((page, stored))
            room -= page.tokens
        for page, stored in chosen:
            self._page_in(table, page, stored)
            table.faults += 1
        if chosen:
            per_page = (time.perf_counter() - started) * 1000 / len(chosen)
            self.latency.page_in.extend([per_page] * len(chosen))
        return [page for page, _ in chosen]

    async def _search(self, table: PageTable, vector: list[float], words: frozenset[str]) -> list[tuple[float, Stored]]:
        """Evicted pages of this memory by hybrid relevance, best first."""
        exclude = [p.number for p in table.resident() if p.stored]
        pool = max(SEARCH_POOL, 4 * self.config.fault_pages)
        found = await trio.to_thread.run_sync(self.swap.search, table.name, vector, pool, exclude)
        scored = [(relevance(s.similarity, words, s.text), s) for s in found]
        scored.sort(key=lambda item: -item[0])
        return scored

    def _page_in(self, table: PageTable, page: Page, stored: Stored) -> None:
        page.text, page.vector = stored.text, stored.vector
        page.resident, page.recalled = True, True
        table.page_ins += 1
        self._touch(page)

    def _prompt(self, order: list[Page]) -> list[dict[str, str]]:
        """Pages as chat messages: neighbouring pages of one message join again; a recalled
        page starts a message of its own that says it is recalled."""
        messages: list[dict[str, str]] = []
        last: tuple[int, bool] | None = None
        for page in order:
            key = (page.message, page.recalled)
            if messages and key == last:
                messages[-1]["content"] += page.text or ""
            else:
                mark = RECALLED if page.recalled else ""
                messages.append({"role": page.role, "content": mark + (page.text or "")})
            last = key
        return messages

    # -- eviction ------------------------------------------------------------------------

    async def _enforce(self, table: PageTable, protect: set[int], fresh: set[int] | None = None) -> int:
        """Evict until the memory and all memories together are within budget. `protect`
        pages stay; `fresh` ones (this operation's, default: `protect`) are not written along."""
        fresh = protect if fresh is None else fresh
        low = self.config.low_water
        evicted = 0
        if table.resident_tokens > table.budget:
            need = table.resident_tokens - int(table.budget * low)
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

    async def _evict(self, candidates: list[Page], need: int, table: PageTable, protect: set[int]) -> int:
        victims = self.policy.victims(candidates, need)
        await self._page_out(victims, table, protect)
        return len(victims)

    async def _page_out(self, victims: list[Page], table: PageTable, protect: set[int]) -> None:
        """Write what the store lacks, memory by memory; only a written page leaves. The
        operation's own new pages (`protect`, in `table`) are not written along: if the
        operation fails they are forgotten, and the store must not keep them."""
        by_memory: dict[str, list[Page]] = {}
        for page in victims:
            by_memory.setdefault(page.memory, []).append(page)
        for name, pages in by_memory.items():
            owned = self.tables[name]
            dirty = [p for p in pages if not p.stored]
            if dirty:
                skip = {p.number for p in pages} | (protect if owned is table else set())
                dirty += _cluster(owned, skip, PAGE_CLUSTER - len(dirty))
            await self._write(name, dirty, measure=True)
            for page in pages:
                _drop_text(page)
                owned.page_outs += 1

    async def _write(self, name: str, pages: list[Page], measure: bool = False) -> None:
        if not pages:
            return
        await self._open_store()
        started = time.perf_counter()
        await trio.to_thread.run_sync(self.swap.write, name, self.holder.get(name, 0), pages)
        if measure:
            per_page = (time.perf_counter() - started) * 1000 / len(pages)
            self.latency.page_out.extend([per_page] * len(pages))
        for page in pages:
            page.stored = True

    # -- explicit requests ---------------------------------------------------------------

    async def recall(self, pid: int, query: str, k: int, page_in: bool = True) -> list[Hit]:
        """The `k` pages most relevant to `query`, resident or not; evicted ones are paged
        back in (within budget) unless `page_in` is false."""
        async with self.lock:
            table = self.table(pid)
            vector = (await self._embed([query]))[0]
            words = content_words(query)
            scored: list[tuple[float, Page, Stored | None]] = [
                (relevance(_dot(vector, p.vector), words, p.text), p, None)
                for p in table.resident()
                if p.vector is not None and p.text is not None
            ]
            if table.evicted():
                for score, stored in await self._search(table, vector, words):
                    page = table.pages.get(stored.number)
                    if page is not None and not page.resident:
                        scored.append((score, page, stored))
            scored.sort(key=lambda item: -item[0])
            best = scored[:k]
            hits: list[Hit] = []
            room = table.budget - table.pinned_tokens
            brought: list[Page] = []
            for score, page, stored in best:
                paged_in = False
                if stored is None:
                    self._touch(page)
                elif page_in and page.tokens <= room:
                    self._page_in(table, page, stored)
                    brought.append(page)
                    paged_in = True
                    room -= page.tokens
                hits.append(Hit(page, stored.text if stored is not None else page.text or "", score, paged_in))
            if brought:
                try:
                    await self._enforce(table, protect={p.number for p in brought})
                except BaseException:
                    for page in brought:
                        _drop_text(page)
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
            if brought:
                found = await trio.to_thread.run_sync(self.swap.read, table.name, [p.number for p in brought])
                for stored in found:
                    self._page_in(table, table.pages[stored.number], stored)
            pinned = [p for p in pages if not p.pinned]
            for page in pinned:
                page.pinned, page.stored = True, False  # the stored entry says unpinned
            try:
                await self._enforce(table, protect=set())
            except BaseException:
                for page in pinned:
                    page.pinned = False
                for page in brought:
                    _drop_text(page)
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
                await self._enforce(table, protect=set())
            except BaseException:
                table.budget = old
                raise
            return table

    async def sync(self, pid: int) -> int:
        """Write every page the store lacks (msync): a named memory then survives a crash."""
        async with self.lock:
            table = self.table(pid)
            dirty = [p for p in table.resident() if not p.stored]
            await self._write(table.name, dirty)
            return len(dirty)

    # -- named memories ------------------------------------------------------------------

    async def attach(self, pid: int, name: str) -> PageTable:
        """Make the named memory the process's own; it is read back from the store if this
        kernel has not seen it (a restart). Allowed before the process stores anything."""
        if not NAME.fullmatch(name) or name.startswith("anon-"):
            raise ValueError(
                f"bad memory name {name!r}: 3-64 letters, digits, '_', '.', '-', starting with a "
                "letter or digit, not 'anon-...'"
            )
        async with self.lock:
            holder = self.holder.get(name)
            if holder == pid:
                return self.tables[name]
            if holder is not None:
                raise MemoryBusy(f"memory {name!r} is attached to process {holder}")
            current = self.memory_of.get(pid)
            if current is not None and self.tables[current].pages:
                raise MemoryBusy(f"process {pid} already has pages in memory {current!r}: attach before storing")
            table = self.tables.get(name) or await self._load(name)
            if current is not None:
                del self.tables[current], self.holder[current]
            self.tables[name] = table
            self.memory_of[pid], self.holder[name] = name, pid
            return table

    async def _load(self, name: str) -> PageTable:
        table = PageTable(name, self.config.budget, named=True)
        entries = await trio.to_thread.run_sync(self.swap.catalog, name)
        for e in entries:
            page = Page(name, e.number, e.position, e.message, e.role, e.tokens, None, None, e.pinned)
            page.resident, page.stored, page.created = False, True, e.created
            table.restore(page)
        table.pages = dict(sorted(table.pages.items()))
        wanted = [p.number for p in table.pages.values() if p.pinned] + self._working_set(table)
        if wanted:  # pinned pages never leave; the newest pages are where the talk goes on
            for stored in await trio.to_thread.run_sync(self.swap.read, name, wanted):
                page = table.pages[stored.number]
                page.text, page.vector, page.resident = stored.text, stored.vector, True
                self._touch(page)
        return table

    def _working_set(self, table: PageTable) -> list[int]:
        """The newest unpinned pages that fit under the low-water mark."""
        room = int(table.budget * self.config.low_water) - table.pinned_tokens
        newest: list[int] = []
        for page in reversed(table.pages.values()):
            if page.pinned:
                continue
            if page.tokens > room:
                break
            newest.append(page.number)
            room -= page.tokens
        return newest

    # -- process exit and kernel shutdown ------------------------------------------------

    def release(self, pid: int) -> Callable[[], Awaitable[None]] | None:
        """The process exited. Returns the store work left to do (for a background task):
        an anonymous memory's stored pages are deleted; a named memory is written out and
        its unpinned pages leave RAM, ready for the next process that attaches it."""
        name = self.memory_of.pop(pid, None)
        if name is None:
            return None
        self.holder.pop(name, None)
        table = self.tables[name]
        if table.named:
            return partial(self._close_named, name)
        del self.tables[name]
        if any(p.stored for p in table.pages.values()):
            return partial(self._background, "delete", self.swap.drop, name)
        return None

    async def _close_named(self, name: str) -> None:
        async with self.lock:
            table = self.tables.get(name)
            if table is None or name in self.holder:  # attached again meanwhile: it stays
                return
            try:
                await self._write(name, [p for p in table.resident() if not p.stored])
            except Exception as exc:  # a background task must never take the kernel down
                self.errors.append(f"writing out memory {name}: {exc}")
                return
            for page in table.resident():
                if not page.pinned:
                    _drop_text(page)

    async def _background(self, what: str, fn: Callable[[str], Any], name: str) -> None:
        async with self.lock:
            try:
                await trio.to_thread.run_sync(fn, name)
            except Exception as exc:  # a background task must never take the kernel down
                self.errors.append(f"{what} memory {name}: {exc}")

    async def close(self) -> None:
        """At kernel shutdown: named memories are written out, anonymous ones deleted. Free
        when memory was never used."""
        if self._swap is None:
            return
        async with self.lock:
            for name, table in list(self.tables.items()):
                try:
                    if table.named:
                        await self._write(name, [p for p in table.resident() if not p.stored])
                    elif any(p.stored for p in table.pages.values()):
                        await trio.to_thread.run_sync(self.swap.drop, name)
                except Exception as exc:  # shutdown goes on; the error is kept for the log
                    self.errors.append(f"closing memory {name}: {exc}")


def _cluster(table: PageTable, skip: set[int], room: int) -> list[Page]:
    """Dirty pages written along with the victims, oldest first: they are the likeliest next
    victims, and one store write of several pages costs little more than one of a single page
    (Linux clusters swap writes for the same reason). Their eviction then writes nothing."""
    if room <= 0:
        return []
    return [p for p in table.resident() if not p.stored and not p.pinned and p.number not in skip][:room]


def _drop_text(page: Page) -> None:
    page.text, page.vector = None, None
    page.resident, page.recalled = False, False


def _dot(a: list[float], b: list[float] | None) -> float:
    if not a or b is None:
        return 0.0
    return float(sum(x * y for x, y in zip(a, b)))


def _mean(vectors: list[list[float]]) -> list[float]:
    if not vectors:
        return []
    if len(vectors) == 1:
        return vectors[0]
    summed = [sum(col) for col in zip(*vectors)]
    norm = math.sqrt(sum(x * x for x in summed)) or 1.0
    return [x / norm for x in summed]
