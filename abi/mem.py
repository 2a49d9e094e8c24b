"""The process's paged memory: mem.chat (llm.chat that remembers), store, recall, pin, unpin,
stat, attach (a named, persistent memory), budget, sync."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmos.abi.catalogue import Empty, declare
from llmos.abi.llm import MAX_MESSAGE_CHARS, ChatChunk, ChatRequest, ChatResponse

Role = Literal["system", "user", "assistant", "tool"]
# The page replacement policies a kernel may run (`MemStat.policy`, `llmos --mem-policy`); how
# each chooses a victim is kernel/memory/pagetable.py's business.
PAGE_POLICIES = ("lru", "lru-k", "clock")


class MemChatRequest(ChatRequest):
    """As llm.chat, but `messages` is only the new turn (system messages are pinned)."""

    remember: bool = Field(default=True, description="false: the turn and the reply are not kept")


class Why(BaseModel):
    """Why a page was recalled: its score parts (kernel/memory/ranking.py)."""

    dense: float  # cosine similarity of its embedding to the query's
    dense_rank: int | None  # 1 = most similar of the memory's pages
    lexical: float  # BM25 of its words against the query's (0: no word in common)
    lexical_rank: int | None
    time: bool  # said within a period the query names
    fused: float  # reciprocal rank fusion of the signals
    neighbour_of: int | None  # recalled as the neighbour of this page
    score: float  # what it was ranked by


class Recalled(BaseModel):
    page: int
    paged_in: bool  # it was evicted and came back for this turn
    why: Why


class TurnInfo(BaseModel):
    pages: list[int]  # where the turn's messages went
    reply_pages: list[int]
    faulted: list[int]  # pages paged back in for this turn
    evicted: int  # pages evicted to make room
    prompt_pages: list[int]  # the pages the model saw, in prompt order
    recalled: list[Recalled] = Field(default_factory=list)  # pages admitted by relevance, best first, and why
    fault_ms: float = 0.0  # ranking and paging in, before the prompt went to the model


class MemChatResponse(ChatResponse):
    memory: TurnInfo


class StoreRequest(BaseModel):
    model_config = {"extra": "forbid"}
    text: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    role: Role = "user"
    pin: bool = False
    time: float | None = Field(
        default=None, ge=0, le=32503680000,
        description="when the message was said, in seconds since the epoch (default now); questions about when use it",
    )  # fmt: skip


class StoreResponse(BaseModel):
    pages: list[int]
    tokens: int
    evicted: int  # pages evicted to make room


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
    time: float  # when it was said
    why: Why


class RecallResponse(BaseModel):
    hits: list[RecallHit]


class PagesRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pages: list[int] = Field(min_length=1, max_length=4096)


class PagesResponse(BaseModel):
    pages: list[int]
    pinned_tokens: int


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
    time: float  # when its message was said
    why: Why | None = None  # why it was last recalled, if it was
    preview: str  # only for the memory's owner and sessions


class MemStat(BaseModel):
    pid: int
    memory: str  # empty if the process has none yet
    named: bool
    policy: str  # one of PAGE_POLICIES
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
    fault_p99_ms: float = 0.0  # per chat turn: ranking and paging in, before the prompt goes to the model
    entries: list[PageEntry]


class AttachRequest(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=3, max_length=64)


class AttachResponse(BaseModel):
    memory: str
    pages: int
    resident_pages: int


class BudgetRequest(BaseModel):
    model_config = {"extra": "forbid"}
    tokens: int = Field(ge=1)


class BudgetResponse(BaseModel):
    budget: int
    resident_tokens: int


class SyncResponse(BaseModel):
    written: int


declare(
    "mem.chat", MemChatRequest, MemChatResponse, ChatChunk,
    doc="Chat over the process's memory: send the new turn; the kernel adds what is relevant.",
)  # fmt: skip
declare("mem.store", StoreRequest, StoreResponse, doc="Add a message to the process's memory (pin=true: it never leaves the prompt).")
declare("mem.recall", RecallRequest, RecallResponse, doc="The k pages of the process's memory most relevant to a query, best first.")
declare("mem.pin", PagesRequest, PagesResponse, doc="Pin pages: paged in if evicted, never evicted while pinned, first in every prompt.")
declare("mem.unpin", PagesRequest, PagesResponse, doc="Unpin pages: the replacement policy may evict them again.")
declare(
    "mem.stat", StatRequest, MemStat,
    doc="A process's page table and counters (its own, a descendant's, or any for sessions).",
)  # fmt: skip
declare(
    "mem.attach", AttachRequest, AttachResponse,
    doc="Use a named memory: it persists, and a later process attaching the name finds it.",
)  # fmt: skip
declare("mem.budget", BudgetRequest, BudgetResponse, doc="Set the process's resident budget in tokens (at most the global budget).")
declare("mem.sync", Empty, SyncResponse, doc="Write every page the store lacks, so a named memory survives a crash.")
