"""Memory syscalls: the process's paged context window (kernel/memory/manager.py).

mem.chat is llm.chat over the process's memory: the agent sends only the new turn; the kernel
stores it, pages in what it needs, builds the prompt from the pages and stores the reply.
The others reach the pages directly: store, recall, pin, unpin, stat, attach (a named,
persistent memory), budget, sync.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from llmos.abi import Empty
from llmos.abi.errors import Errno, SyscallError
from llmos.abi.llm import Message
from llmos.abi.mem import (
    AttachRequest,
    AttachResponse,
    BudgetRequest,
    BudgetResponse,
    MemChatRequest,
    MemChatResponse,
    MemStat,
    PageEntry,
    PagesRequest,
    PagesResponse,
    Recalled,
    RecallHit,
    RecallRequest,
    RecallResponse,
    StatRequest,
    StoreRequest,
    StoreResponse,
    SyncResponse,
    TurnInfo,
    Why,
)
from llmos.kernel.memory.manager import MemoryBusy, NoSuchPage, OverBudget, p99
from llmos.kernel.memory.pagetable import Page, PageTable
from llmos.kernel.memory.ranking import Score
from llmos.kernel.memory.vectorstore import VectorStoreUnavailable
from llmos.syscalls import llm
from llmos.syscalls.proc import target_process
from llmos.syscalls.table import Call, syscall

PREVIEW_CHARS = 60


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


@syscall("mem.chat")
async def chat(call: Call, req: MemChatRequest) -> MemChatResponse:
    """The kernel's memory opens the turn (stores it, admits what it needs, builds the prompt),
    the model answers, and the turn ends (the reply stored, or the turn forgotten)."""
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
        await memory.end_turn(proc.pid, None)  # shielded where it must forget
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
        recalled=[Recalled(page=r.page.number, paged_in=r.paged_in, why=why(r.why)) for r in turn.recalled],
        fault_ms=round(turn.fault_ms, 3),
    )
    return MemChatResponse(**response.model_dump(), memory=info)


def why(score: Score) -> Why:
    return Why(
        dense=round(score.dense, 4),
        dense_rank=score.dense_rank,
        lexical=round(score.lexical, 4),
        lexical_rank=score.lexical_rank,
        time=score.time,
        fused=round(score.fused, 5),
        neighbour_of=score.neighbour_of,
        score=round(score.score, 5),
    )


# -- store, recall, pin, unpin -------------------------------------------------------------


@syscall("mem.store")
async def store(call: Call, req: StoreRequest) -> StoreResponse:
    with memory_errors():
        pages, evicted = await call.kernel.memory.store(call.proc.pid, req.role, req.text, req.pin, req.time)
    enforce_page_quota(call)
    return StoreResponse(pages=[p.number for p in pages], tokens=sum(p.tokens for p in pages), evicted=evicted)


@syscall("mem.recall")
async def recall(call: Call, req: RecallRequest) -> RecallResponse:
    with memory_errors():
        hits = await call.kernel.memory.recall(call.proc.pid, req.query, req.k, req.page_in)
    enforce_page_quota(call)
    return RecallResponse(
        hits=[
            RecallHit(
                page=h.page.number, role=h.page.role, text=h.text, score=round(h.score, 5), paged_in=h.paged_in,
                time=h.page.time, why=why(h.why),
            )
            for h in hits
        ]
    )


@syscall("mem.pin")
async def pin(call: Call, req: PagesRequest) -> PagesResponse:
    memory = call.kernel.memory
    with memory_errors():
        pages = await memory.pin(call.proc.pid, req.pages)
    enforce_page_quota(call)
    return PagesResponse(pages=[p.number for p in pages], pinned_tokens=memory.table(call.proc.pid).pinned_tokens)


@syscall("mem.unpin")
async def unpin(call: Call, req: PagesRequest) -> PagesResponse:
    memory = call.kernel.memory
    with memory_errors():
        pages = await memory.unpin(call.proc.pid, req.pages)
    return PagesResponse(pages=[p.number for p in pages], pinned_tokens=memory.table(call.proc.pid).pinned_tokens)


# -- stat ---------------------------------------------------------------------------------


@syscall("mem.stat")
async def stat(call: Call, req: StatRequest) -> MemStat:
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
        fault_p99_ms=round(p99(memory.latency.fault), 3),
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
        time=page.time,
        why=why(page.why) if page.why is not None and reveal else None,
        preview=preview.replace("\n", " "),
    )


# -- attach, budget, sync -----------------------------------------------------------------


@syscall("mem.attach")
async def attach(call: Call, req: AttachRequest) -> AttachResponse:
    with memory_errors():
        try:
            table = await call.kernel.memory.attach(call.proc.pid, req.name)
        except ValueError as exc:
            raise SyscallError(Errno.EINVAL, f"mem.attach: name: {exc}") from None
    enforce_page_quota(call)
    return AttachResponse(memory=table.name, pages=len(table.pages), resident_pages=len(table.resident()))


@syscall("mem.budget")
async def budget(call: Call, req: BudgetRequest) -> BudgetResponse:
    memory = call.kernel.memory
    if req.tokens > memory.config.global_budget:
        raise SyscallError(Errno.EINVAL, f"mem.budget: tokens: at most the global budget ({memory.config.global_budget})")
    with memory_errors():
        table = await memory.set_budget(call.proc.pid, req.tokens)
    return BudgetResponse(budget=table.budget, resident_tokens=table.resident_tokens)


@syscall("mem.sync")
async def sync(call: Call, req: Empty) -> SyncResponse:
    with memory_errors():
        return SyncResponse(written=await call.kernel.memory.sync(call.proc.pid))
