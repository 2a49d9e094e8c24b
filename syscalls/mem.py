"""Memory syscalls: the process's paged context window (kernel/memory/manager.py).

mem.chat is llm.chat over the process's memory: the agent sends only the new turn; the kernel
stores it, pages in what it needs, builds the prompt from the pages and stores the reply.
The others reach the pages directly: store, recall, pin, unpin, stat, attach (a named,
persistent memory), budget, sync.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

from pydantic import BaseModel, Field

from llmos.kernel.memory.manager import MemoryBusy, NoSuchPage, OverBudget, p99
from llmos.kernel.memory.pagetable import Page, PageTable
from llmos.kernel.memory.vectorstore import VectorStoreUnavailable
from llmos.syscalls import llm
from llmos.syscalls.errors import Errno, SyscallError
from llmos.syscalls.llm import MAX_MESSAGE_CHARS, ChatChunk, ChatRequest, ChatResponse, Message
from llmos.syscalls.proc import Empty, target_process
from llmos.syscalls.table import Call, syscall

PREVIEW_CHARS = 60
Role = Literal["system", "user", "assistant", "tool"]


@contextmanager
def memory_errors() -> Iterator[None]:
    """Kernel memory exceptions as typed syscall errors."""
    try:
        yield
    except VectorStoreUnavailable as exc:
        raise SyscallError(Errno.EIO, f"memory store unavailable (nothing was changed): {exc}") from None
    except NoSuchPage as exc:
        raise SyscallError(Errno.ENOENT, str(exc)) from None
    except OverBudget as exc:
        raise SyscallError(Errno.EAGAIN, str(exc)) from None
    except MemoryBusy as exc:
        raise SyscallError(Errno.EBUSY, str(exc)) from None


def enforce_page_quota(call: Call) -> None:
    """The max_memory_pages quota (kernel/proc/quota.py) counts the pages a process holds resident:
    over it, the kernel kills the process."""
    resident = len(call.kernel.memory.table(call.proc.pid).resident())
    if not call.kernel.enforce_quota(call.proc, pages=resident):
        raise SyscallError(Errno.EKILLED, f"process {call.proc.pid} was killed: {call.proc.kill_reason}")


# -- mem.chat -----------------------------------------------------------------------------


class MemChatRequest(ChatRequest):
    """As llm.chat, but `messages` is only the new turn (system messages are pinned)."""

    remember: bool = Field(default=True, description="false: the turn and the reply are not kept")


class TurnInfo(BaseModel):
    pages: list[int]  # where the turn's messages went
    reply_pages: list[int]
    faulted: list[int]  # pages paged back in for this turn
    evicted: int  # pages evicted to make room
    prompt_pages: list[int]  # the pages the model saw, in prompt order


class MemChatResponse(ChatResponse):
    memory: TurnInfo


@syscall("mem.chat", MemChatRequest, MemChatResponse, chunk=ChatChunk)
async def chat(call: Call, req: MemChatRequest) -> MemChatResponse:
    """Chat over the process's memory: send the new turn; the kernel adds what is relevant."""
    memory, proc = call.kernel.memory, call.proc
    if proc.wchan == "llm":
        raise SyscallError(Errno.EBUSY, f"process {proc.pid} already has an llm.chat in progress")
    with memory_errors():
        turn = await memory.begin_turn(proc.pid, [m.model_dump() for m in req.messages], remember=req.remember)
    try:
        enforce_page_quota(call)
        proc.write_log("mem", f"turn: pages {turn.pages}, paged in {turn.faulted}, evicted {turn.evicted}")
        prompt = [Message.model_construct(**m) for m in turn.prompt]
        response = await llm.chat(call, req.model_copy(update={"messages": prompt}))
    except BaseException:
        await memory.end_turn(proc.pid, None)
        raise
    with memory_errors():
        reply = await memory.end_turn(proc.pid, response.content)
    enforce_page_quota(call)
    info = TurnInfo(
        pages=turn.pages,
        reply_pages=[p.number for p in reply],
        faulted=turn.faulted,
        evicted=turn.evicted,
        prompt_pages=turn.prompt_pages,
    )
    return MemChatResponse(**response.model_dump(), memory=info)


# -- store, recall, pin, unpin -------------------------------------------------------------


class StoreRequest(BaseModel):
    model_config = {"extra": "forbid"}
    text: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    role: Role = "user"
    pin: bool = False


class StoreResponse(BaseModel):
    pages: list[int]
    tokens: int
    evicted: int  # pages evicted to make room


@syscall("mem.store", StoreRequest, StoreResponse)
async def store(call: Call, req: StoreRequest) -> StoreResponse:
    """Add a message to the process's memory (pin=true: it never leaves the prompt)."""
    with memory_errors():
        pages, evicted = await call.kernel.memory.store(call.proc.pid, req.role, req.text, req.pin)
    enforce_page_quota(call)
    return StoreResponse(pages=[p.number for p in pages], tokens=sum(p.tokens for p in pages), evicted=evicted)


class RecallRequest(BaseModel):
    model_config = {"extra": "forbid"}
    query: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    k: int = Field(default=4, ge=1, le=64)
    page_in: bool = Field(default=True, description="page evicted hits back in (within budget)")


class RecallHit(BaseModel):
    page: int
    role: str
    text: str
    score: float
    paged_in: bool


class RecallResponse(BaseModel):
    hits: list[RecallHit]


@syscall("mem.recall", RecallRequest, RecallResponse)
async def recall(call: Call, req: RecallRequest) -> RecallResponse:
    """The k pages of the process's memory most relevant to a query, best first."""
    with memory_errors():
        hits = await call.kernel.memory.recall(call.proc.pid, req.query, req.k, req.page_in)
    enforce_page_quota(call)
    return RecallResponse(
        hits=[RecallHit(page=h.page.number, role=h.page.role, text=h.text, score=round(h.score, 4), paged_in=h.paged_in) for h in hits]
    )


class PagesRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pages: list[int] = Field(min_length=1, max_length=4096)


class PagesResponse(BaseModel):
    pages: list[int]
    pinned_tokens: int


@syscall("mem.pin", PagesRequest, PagesResponse)
async def pin(call: Call, req: PagesRequest) -> PagesResponse:
    """Pin pages: paged in if evicted, never evicted while pinned, first in every prompt."""
    memory = call.kernel.memory
    with memory_errors():
        pages = await memory.pin(call.proc.pid, req.pages)
    enforce_page_quota(call)
    return PagesResponse(pages=[p.number for p in pages], pinned_tokens=memory.table(call.proc.pid).pinned_tokens)


@syscall("mem.unpin", PagesRequest, PagesResponse)
async def unpin(call: Call, req: PagesRequest) -> PagesResponse:
    """Unpin pages: the replacement policy may evict them again."""
    memory = call.kernel.memory
    with memory_errors():
        pages = await memory.unpin(call.proc.pid, req.pages)
    return PagesResponse(pages=[p.number for p in pages], pinned_tokens=memory.table(call.proc.pid).pinned_tokens)


# -- stat ---------------------------------------------------------------------------------


class StatRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int | None = Field(default=None, description="the caller's own memory if omitted")
    pages: bool = Field(default=True, description="include the page table entries")


class PageEntry(BaseModel):
    page: int
    position: int
    message: int
    role: str
    tokens: int
    state: Literal["resident", "evicted"]
    pinned: bool
    recalled: bool
    stored: bool
    last_access: int
    accesses: int
    preview: str  # only for the memory's owner and sessions


class MemStat(BaseModel):
    pid: int
    memory: str  # empty if the process has none yet
    named: bool
    policy: str
    page_tokens: int
    budget: int
    resident_tokens: int
    pinned_tokens: int
    total_tokens: int
    pages: int
    resident_pages: int
    evicted_pages: int
    pinned_pages: int
    faults: int
    page_ins: int
    page_outs: int
    global_budget: int
    global_resident_tokens: int  # of all memories
    page_out_p99_ms: float  # per page, over the kernel's recent page-outs
    page_in_p99_ms: float  # per page, over the kernel's recent page faults
    entries: list[PageEntry]


@syscall("mem.stat", StatRequest, MemStat)
async def stat(call: Call, req: StatRequest) -> MemStat:
    """A process's page table and counters (its own, a descendant's, or any for sessions)."""
    pid = call.proc.pid if req.pid is None else target_process(call, req.pid).pid
    memory = call.kernel.memory
    name = memory.memory_of.get(pid)
    table = memory.tables[name] if name is not None else PageTable("", memory.config.budget, named=False)
    reveal = pid == call.proc.pid or call.proc.session
    pages = list(table.pages.values())
    return MemStat(
        pid=pid,
        memory=table.name,
        named=table.named,
        policy=memory.policy.name,
        page_tokens=memory.config.page_tokens,
        budget=table.budget,
        resident_tokens=table.resident_tokens,
        pinned_tokens=table.pinned_tokens,
        total_tokens=sum(p.tokens for p in pages),
        pages=len(pages),
        resident_pages=sum(p.resident for p in pages),
        evicted_pages=sum(not p.resident for p in pages),
        pinned_pages=sum(p.pinned for p in pages),
        faults=table.faults,
        page_ins=table.page_ins,
        page_outs=table.page_outs,
        global_budget=memory.config.global_budget,
        global_resident_tokens=memory.resident_tokens(),
        page_out_p99_ms=round(p99(memory.latency.page_out), 3),
        page_in_p99_ms=round(p99(memory.latency.page_in), 3),
        entries=[_entry(p, reveal) for p in pages] if req.pages else [],
    )


def _entry(page: Page, reveal: bool) -> PageEntry:
    preview = (page.text or "")[:PREVIEW_CHARS] if reveal else ""
    return PageEntry(
        page=page.number,
        position=page.position,
        message=page.message,
        role=page.role,
        tokens=page.tokens,
        state="resident" if page.resident else "evicted",
        pinned=page.pinned,
        recalled=page.recalled,
        stored=page.stored,
        last_access=page.last_access,
        accesses=page.accesses,
        preview=preview.replace("\n", " "),
    )


# -- attach, budget, sync -----------------------------------------------------------------


class AttachRequest(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=3, max_length=64)


class AttachResponse(BaseModel):
    memory: str
    pages: int
    resident_pages: int


@syscall("mem.attach", AttachRequest, AttachResponse)
async def attach(call: Call, req: AttachRequest) -> AttachResponse:
    """Use a named memory: it persists, and a later process attaching the name finds it."""
    with memory_errors():
        try:
            table = await call.kernel.memory.attach(call.proc.pid, req.name)
        except ValueError as exc:
            raise SyscallError(Errno.EINVAL, f"mem.attach: name: {exc}") from None
    enforce_page_quota(call)
    return AttachResponse(memory=table.name, pages=len(table.pages), resident_pages=len(table.resident()))


class BudgetRequest(BaseModel):
    model_config = {"extra": "forbid"}
    tokens: int = Field(ge=1)


class BudgetResponse(BaseModel):
    budget: int
    resident_tokens: int


@syscall("mem.budget", BudgetRequest, BudgetResponse)
async def budget(call: Call, req: BudgetRequest) -> BudgetResponse:
    """Set the process's resident budget in tokens (at most the global budget)."""
    memory = call.kernel.memory
    if req.tokens > memory.config.global_budget:
        raise SyscallError(Errno.EINVAL, f"mem.budget: tokens: at most the global budget ({memory.config.global_budget})")
    with memory_errors():
        table = await memory.set_budget(call.proc.pid, req.tokens)
    return BudgetResponse(budget=table.budget, resident_tokens=table.resident_tokens)


class SyncResponse(BaseModel):
    written: int


@syscall("mem.sync", Empty, SyncResponse)
async def sync(call: Call, req: Empty) -> SyncResponse:
    """Write every page the store lacks, so a named memory survives a crash."""
    with memory_errors():
        return SyncResponse(written=await call.kernel.memory.sync(call.proc.pid))
