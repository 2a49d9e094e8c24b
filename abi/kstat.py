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
    weights: str = ""  # weight format (--weights); empty for a remote model
    device: str = ""  # where the model runs (--device); empty for a remote model
    failed_steps: int = 0  # forward passes that raised (their requests got EIO; the kernel went on)
    journal_failures: int = 0  # failed commits of the daemon's journal (state not on disk)
    journal_error: str | None = None  # the latest of them
    isolation: str = "workers"  # how agent programs run: "workers" or "inprocess-trusted"
    sandbox: str = ""  # what confines a worker here (Landlock ABI, seccomp), or what is missing


declare("kernel.stat", Empty, KernelStat, doc="Model, policy, engine counters and memory in use.")
