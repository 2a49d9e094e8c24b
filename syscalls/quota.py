"""proc.limits: a process's quota, what it has used and what is left (Unix's getrlimit).

An agent can pace itself with it, and a parent can see what it may still hand to a child.
"""

from __future__ import annotations

import time

from llmos.abi.proc import Limits, QuotaSpec, Used
from llmos.kernel.proc.quota import Quota, tokens_used
from llmos.syscalls.table import Call
from llmos.syscalls.tools import tool


@tool("proc.limits")
async def limits(call: Call) -> Limits:
    proc, quota = call.proc, call.kernel.caps[call.proc.pid].quota
    now = time.time()
    return Limits(
        quota=_spec(quota),
        used=Used(tokens=tokens_used(proc), wall_time=round(now - proc.created, 3), syscalls=proc.syscalls),
        left=_spec(quota.left_for(proc, now)),
    )


def _spec(q: Quota) -> QuotaSpec:
    return QuotaSpec(
        max_tokens=q.max_tokens, max_wall_time=q.max_wall_time, max_syscalls=q.max_syscalls,
        max_memory_pages=q.max_memory_pages, max_memory_mb=q.max_memory_mb, max_cpu_time=q.max_cpu_time,
    )
