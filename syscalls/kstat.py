"""kernel.stat: the kernel's own figures, for `top`, the demo and operators."""

from __future__ import annotations

import time

from pydantic import BaseModel

from llmos.syscalls.proc import Empty
from llmos.syscalls.table import Call, syscall


class KernelStat(BaseModel):
    model: str
    policy: str
    max_batch: int
    quantum: int
    uptime: float
    processes: int
    running: int  # sequences in the decode batch now
    waiting: int  # sequences waiting for a place in it
    steps: int
    tokens_generated: int
    tokens_prefilled: int
    busy_time: float
    preemptions: int
    kv_bytes: int
    kv_budget_bytes: int
    kv_evictions: int
    shared_prefix_tokens: int
    # The prefix cache (kernel/model/kvcache.py): per submitted prompt, whether and how much of
    # it was already computed (its own retained cache, an exited process's, or a shared prefix).
    prefix_lookups: int = 0
    prefix_hits: int = 0
    prefix_hit_rate: float = 0.0  # prefix_hits / prefix_lookups
    prefix_prompt_tokens: int = 0
    prefix_reused_tokens: int = 0
    prefix_token_hit_rate: float = 0.0  # reused / prompt tokens: prefill avoided
    prefix_retired: int = 0  # exited processes' caches held now
    prefix_retired_bytes: int = 0
    prefix_adopted: int = 0  # retired caches taken over by a new context, all time
    weights: str = ""  # weight precision mode (--weights); empty for a remote model
    device: str = ""  # where the model runs (--device); empty for a remote model
    failed_steps: int = 0  # forward passes that raised (their requests got EIO; the kernel went on)
    journal_failures: int = 0  # failed commits of the daemon's journal (state not on disk)
    journal_error: str | None = None  # the latest of them


@syscall("kernel.stat", Empty, KernelStat)
async def stat(call: Call, req: Empty) -> KernelStat:
    """Model, policy, engine counters and memory in use."""
    k = call.kernel
    s = k.engine.stats
    pool = k.engine.pool
    kv = pool.stats
    return KernelStat(
        model=k.backend.name,
        policy=k.scheduler.policy,
        max_batch=k.scheduler.max_batch,
        quantum=k.scheduler.quantum,
        uptime=round(time.time() - k.started, 3),
        processes=k.procs.live_count(),
        running=len(k.scheduler.running),
        waiting=len(k.scheduler.waiting),
        steps=s.steps,
        tokens_generated=s.tokens_generated,
        tokens_prefilled=s.tokens_prefilled,
        busy_time=round(s.busy_time, 3),
        preemptions=k.scheduler.preemptions,
        kv_bytes=k.engine.pool.used_bytes(),
        kv_budget_bytes=k.engine.pool.budget_bytes,
        kv_evictions=k.engine.pool.stats.evictions,
        shared_prefix_tokens=k.engine.pool.stats.shared_prefix_tokens,
        prefix_lookups=kv.lookups,
        prefix_hits=kv.hits,
        prefix_hit_rate=round(kv.hit_rate, 4),
        prefix_prompt_tokens=kv.prompt_tokens,
        prefix_reused_tokens=kv.reused_tokens,
        prefix_token_hit_rate=round(kv.token_hit_rate, 4),
        prefix_retired=getattr(pool, "retired_count", 0),
        prefix_retired_bytes=pool.retired_bytes() if hasattr(pool, "retired_bytes") else 0,
        prefix_adopted=kv.adopted,
        weights=getattr(k.backend, "weights", ""),
        device=str(getattr(k.backend, "device", "")),
        failed_steps=getattr(s, "failed_steps", 0),
        journal_failures=k.journal.failures if k.journal is not None else 0,
        journal_error=k.journal.last_error if k.journal is not None else None,
    )
