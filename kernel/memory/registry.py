"""Named memories and their holders: which memory is whose, and what happens at exit.

Each process has one memory. By default it is anonymous (`anon-<boot>-<pid>`): private, and
gone with the process, like anonymous memory and its swap slots. A process may instead attach
a named memory (`mem.attach`) before it stores anything: its pages persist in the store, and a
later process, in this kernel or after a restart, attaching the same name finds them again. A
name is held by one live process at a time, so no process ever reads pages it does not own.
"""

from __future__ import annotations

import re
import secrets
from collections import deque
from functools import partial
from typing import Any, Awaitable, Callable

import trio

from llmos.kernel.memory.pager import Pager, drop_text
from llmos.kernel.memory.pagetable import Page, PageTable

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,63}")


class MemoryBusy(RuntimeError):
    pass


class Registry:
    def __init__(self, budget: int, low_water: float, pager: Pager, lock: trio.Lock) -> None:
        self.budget = budget  # a new memory's
        self.low_water = low_water
        self.pager = pager
        self.lock = lock  # the memory manager's: background work takes it too
        self.tables: dict[str, PageTable] = pager.tables
        self.holder: dict[str, int] = pager.holder  # name -> pid attached to it
        self.memory_of: dict[int, str] = {}  # pid -> name of its memory
        self.errors: deque[str] = deque(maxlen=32)  # failures of background work (exit cleanup)
        self._boot = secrets.token_hex(4)  # anonymous memories of different boots never meet

    def table(self, pid: int) -> PageTable:
        """The process's memory; an anonymous one is made on first use."""
        name = self.memory_of.get(pid)
        if name is None:
            name = f"anon-{self._boot}-{pid}"
            self.tables[name] = PageTable(name, self.budget, named=False)
            self.memory_of[pid], self.holder[name] = name, pid
        return self.tables[name]

    # -- attach --------------------------------------------------------------------------

    async def attach(self, pid: int, name: str) -> PageTable:
        """Make the named memory the process's own; it is read back from the store if this
        kernel has not seen it (a restart). Allowed before the process stores anything. The
        caller holds the lock."""
        if not NAME.fullmatch(name) or name.startswith("anon-"):
            raise ValueError(
                f"bad memory name {name!r}: 3-64 letters, digits, '_', '.', '-', starting with a "
                "letter or digit, not 'anon-...'"
            )
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
            self.tables.pop(current).index.drop()
            del self.holder[current]
        self.tables[name] = table
        self.memory_of[pid], self.holder[name] = name, pid
        return table

    async def _load(self, name: str) -> PageTable:
        """Rebuild a named memory from the store: every page's entry and index entry; the
        pinned pages and the newest pages under the low-water mark come back into RAM."""
        table = PageTable(name, self.budget, named=True)
        entries = await trio.to_thread.run_sync(partial(self.pager.swap.catalog, name, full=True))
        for e in sorted(entries, key=lambda e: e.number):
            page = Page(name, e.number, e.position, e.message, e.role, e.tokens, None, e.pinned)
            page.resident, page.stored, page.created, page.time = False, True, e.created, e.said
            table.restore(page, e.text, e.vector or [])
        texts = {e.number: e.text for e in entries}
        wanted = [p.number for p in table.pages.values() if p.pinned] + self._working_set(table)
        for number in wanted:  # pinned pages never leave; the newest pages are where the talk goes on
            page = table.pages[number]
            page.text, page.resident = texts[number], True
            self.pager.touch(page)
        return table

    def _working_set(self, table: PageTable) -> list[int]:
        """The newest unpinned pages that fit under the low-water mark."""
        room = int(table.budget * self.low_water) - table.pinned_tokens
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
        table.index.drop()
        if any(p.stored for p in table.pages.values()):
            return partial(self._background, "delete", self.pager.swap.drop, name)
        return None

    async def _close_named(self, name: str) -> None:
        async with self.lock:
            table = self.tables.get(name)
            if table is None or name in self.holder:  # attached again meanwhile: it stays
                return
            try:
                await self.pager.write(table, [p for p in table.resident() if not p.stored])
            except Exception as exc:  # a background task must never take the kernel down
                self.errors.append(f"writing out memory {name}: {exc}")
                return
            for page in table.resident():
                if not page.pinned:
                    drop_text(page)

    async def _background(self, what: str, fn: Callable[[str], Any], name: str) -> None:
        async with self.lock:
            try:
                await trio.to_thread.run_sync(fn, name)
            except Exception as exc:  # a background task must never take the kernel down
                self.errors.append(f"{what} memory {name}: {exc}")

    async def close(self) -> None:
        """At kernel shutdown: named memories are written out, anonymous ones deleted. The
        caller holds the lock."""
        for name, table in list(self.tables.items()):
            try:
                if table.named:
                    await self.pager.write(table, [p for p in table.resident() if not p.stored])
                elif any(p.stored for p in table.pages.values()):
                    await trio.to_thread.run_sync(self.pager.swap.drop, name)
            except Exception as exc:  # shutdown goes on; the error is kept for the log
                self.errors.append(f"closing memory {name}: {exc}")
            table.index.drop()
