"""kernel.stat: the kernel's own figures, for `top`, the demo and operators."""

from __future__ import annotations

from pydantic import BaseModel

from llmos.abi.catalogue import Empty, declare

# The scheduling policies a kernel may run (`KernelStat.policy`, `llmos --policy`); what each
# does is kernel/model/scheduler.py's business.
SCHED_POLICIES = ("rr", "fair", "priority")


class KernelStat(BaseModel):
    model: str
    policy: str  # one of SCHED_POLICIES
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
    failed_steps: int = 0  # forward passes that raised (their requests got EIO; the kernel went on)
    journal_failures: int = 0  # failed commits of the daemon's journal (state not on disk)
    journal_error: str | None = None  # the latest of them
    isolation: str = "workers"  # how agent programs run: "workers" or "inprocess-trusted"
    sandbox: str = ""  # what confines a worker here (Landlock ABI, seccomp), or what is missing


declare("kernel.stat", Empty, KernelStat, doc="Model, policy, engine counters and memory in use.")
