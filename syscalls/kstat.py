"""kernel.stat: the kernel's own figures, for `top`, the demo and operators."""

from __future__ import annotations

import time

from llmos.abi import Empty
from llmos.abi.kstat import KernelStat
from llmos.syscalls.table import Call, syscall


@syscall("kernel.stat")
async def stat(call: Call, req: Empty) -> KernelStat:
    k = call.kernel
    s, kv = k.engine.stats, k.engine.kv_usage()
    counts = kv.counts
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
        kv_bytes=kv.used_bytes,
        kv_budget_bytes=kv.budget_bytes,
        kv_evictions=counts.evictions,
        shared_prefix_tokens=counts.shared_prefix_tokens,
        prefix_lookups=counts.lookups,
        prefix_hits=counts.hits,
        prefix_hit_rate=round(counts.hit_rate, 4),
        prefix_prompt_tokens=counts.prompt_tokens,
        prefix_reused_tokens=counts.reused_tokens,
        prefix_token_hit_rate=round(counts.token_hit_rate, 4),
        prefix_retired=kv.retired,
        prefix_retired_bytes=kv.retired_bytes,
        prefix_adopted=counts.adopted,
        weights=getattr(k.backend, "weights", ""),  # a remote model has neither
        device=str(getattr(k.backend, "device", "")),
        failed_steps=s.failed_steps,
        journal_failures=k.journal.failures if k.journal is not None else 0,
        journal_error=k.journal.last_error if k.journal is not None else None,
        isolation=k.runner.isolation,
        sandbox=k.runner.describe(),
    )
