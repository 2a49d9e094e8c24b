"""proc.limits: a process's quota, what it has used and what is left (Unix's getrlimit).

An agent can pace itself with it, and a parent can see what it may still hand to a child.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from llmos.kernel.proc.quota import Quota, tokens_used
from llmos.syscalls.proc import QuotaSpec
from llmos.syscalls.table import Call
from llmos.syscalls.tools import tool


class Used(BaseModel):
    tokens: int
    wall_time: float
    syscalls: int


class Limits(BaseModel):
    quota: QuotaSpec  # None: unlimited
    used: Used
    left: QuotaSpec


@tool("proc.limits")
async def limits(call: Call) -> Limits:
    """The caller's quota (max tokens, wall time, syscalls, memory pages), its use so far and what is left."""
    proc, quota = call.proc, call.kernel.caps[call.proc.pid].quota
    now = time.time()
    return Limits(
        quota=_spec(quota),
        used=Used(tokens=tokens_used(proc), wall_time=round(now - proc.created, 3), syscalls=proc.syscalls),
        left=_spec(quota.left_for(proc, now)),
    )


def _spec(q: Quota) -> QuotaSpec:
    return QuotaSpec(
        max_tokens=q.max_tokens, max_wall_time=q.max_wall_time, max_syscalls=q.max_syscalls, max_memory_pages=q.max_memory_pages
    )
