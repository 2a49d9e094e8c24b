"""Quotas: how much a process may consume (Unix's rlimits), fixed when it is spawned.

  max_tokens        prompt + generated tokens over the process's life (as an LLM bill counts them)
  max_wall_time     seconds from spawn: a trio deadline on the process's cancel scope
  max_syscalls      syscalls made, failed ones included (a loop of bad calls is still a loop)
  max_memory_pages  context pages resident at once, reported by the memory manager through
                    `Kernel.enforce_quota(proc, pages=...)`
  max_memory_mb     address space of the process's worker (RLIMIT_AS): past it, allocations fail
                    (MemoryError) and the program ends with that traceback
  max_cpu_time      CPU seconds its worker may use (RLIMIT_CPU): past it, SIGXCPU ends it (exit 152)

None means unlimited. A child's limits are never more than what its parent has left when it
is spawned: a child cannot outlive its parent's deadline or spend tokens its parent no longer
has. Exceeding a limit kills the process with exit code 152 and the reason as exit status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Protocol


class Usage(Protocol):
    """What a process has used so far (kernel/proc/process.py: Process)."""

    created: float
    prompt_tokens: int
    generated_tokens: int
    syscalls: int


@dataclass(frozen=True)
class Quota:
    max_tokens: int | None = None
    max_wall_time: float | None = None
    max_syscalls: int | None = None
    max_memory_pages: int | None = None
    max_memory_mb: int | None = None
    max_cpu_time: int | None = None

    def within(self, limit: "Quota") -> "Quota":
        """Each limit the tighter of this quota's and `limit`'s."""
        return Quota(**{f.name: _min(getattr(self, f.name), getattr(limit, f.name)) for f in fields(self)})

    def left_for(self, proc: Usage, now: float | None = None) -> "Quota":
        """What is left of these limits after what `proc` has used: the most its child may get."""
        now = time.time() if now is None else now
        return Quota(
            max_tokens=_left(self.max_tokens, tokens_used(proc)),
            max_wall_time=_left(self.max_wall_time, now - proc.created),
            max_syscalls=_left(self.max_syscalls, proc.syscalls),
            max_memory_pages=self.max_memory_pages,  # a level in use, not a running total
            max_memory_mb=self.max_memory_mb,  # a level too
            max_cpu_time=self.max_cpu_time,  # each process has its own CPU clock
        )

    def exceeded(self, proc: Usage, pages: int | None = None, now: float | None = None) -> str | None:
        """Why `proc` is over its quota, or None."""
        now = time.time() if now is None else now
        if self.max_syscalls is not None and proc.syscalls > self.max_syscalls:
            return f"quota exceeded: max_syscalls {self.max_syscalls}"
        if self.max_tokens is not None and tokens_used(proc) > self.max_tokens:
            return f"quota exceeded: max_tokens {self.max_tokens} (used {tokens_used(proc)})"
        if self.max_wall_time is not None and now - proc.created > self.max_wall_time:
            return wall_time_reason(self.max_wall_time)
        if pages is not None and self.max_memory_pages is not None and pages > self.max_memory_pages:
            return f"quota exceeded: max_memory_pages {self.max_memory_pages} (wanted {pages})"
        return None

    def describe(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def tokens_used(proc: Usage) -> int:
    return proc.prompt_tokens + proc.generated_tokens


def wall_time_reason(limit: float) -> str:
    return f"quota exceeded: max_wall_time {limit:g} s"


def _min(a, b):
    if a is None:
        return b
    return a if b is None else min(a, b)


def _left(limit, used):
    if limit is None:
        return None
    return max(0, limit - used)
