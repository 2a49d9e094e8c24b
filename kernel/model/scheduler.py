"""Which processes' tokens go into the next forward pass.

The model is the CPU being time-sliced. Sequences wait in `waiting` until admitted to
`running`, the batch decoded together; the batch holds at most `max_batch` of them. A running
sequence that has used its quantum of tokens is preempted when the policy prefers someone who
is waiting; it keeps its KV cache and later resumes where it stopped, without prefilling again.

Each step every running sequence that is decoding feeds one token; sequences with a prompt to
prefill share a budget of `prefill_chunk` tokens, so a long new prompt is spread over several
steps instead of stalling everybody (chunked prefill). With `prefill_first`, a step that finds
newcomers runs their prefill alone, so their first token does not wait for a full decode step
of everybody else; the next step always includes the decoders, so they never starve.

Policies:
  rr        round robin: preempt at the quantum whenever anyone waits; admit in arrival order.
  fair      weighted fair share (CFS-like): virtual runtime grows by tokens / weight(nice);
            admit the smallest virtual runtime; preempt when a waiting one is behind.
  priority  strict priority by nice (lower first); round robin within a level.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmos.abi.kstat import SCHED_POLICIES
from llmos.kernel.model.sequence import SeqStatus, Sequence

POLICIES = SCHED_POLICIES  # the names are part of the ABI (kernel.stat reports them)


def nice_weight(nice: int) -> float:
    """Share weight of a nice value: x2 every 3 steps (Linux uses x1.25 a step, nearly the same),
    so nice 0, -3, -6 weigh exactly 1:2:4."""
    return 2.0 ** (-nice / 3.0)


@dataclass
class Scheduled:
    seq: Sequence
    n_tokens: int
    want_logits: bool


class Scheduler:
    def __init__(
        self,
        policy: str = "rr",
        max_batch: int = 32,
        quantum: int = 32,
        prefill_chunk: int = 256,
        prefill_first: bool = True,
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = policy
        self.max_batch = max_batch
        self.quantum = quantum
        self.prefill_chunk = prefill_chunk
        self.prefill_first = prefill_first
        self._last_prefill_only = False
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.min_vruntime = 0.0
        self.preemptions = 0

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        # A newcomer starts at the current virtual time, so it cannot claim the model for as
        # long as it was absent (CFS's place_entity).
        seq.owner.vruntime = max(seq.owner.vruntime, self.min_vruntime)
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def schedule(self) -> list[Scheduled]:
        self._preempt_expired()
        self.admit()
        decoding = [s for s in self.running if s.num_pending <= 1]
        prefill = self._prefill_chunks()
        if prefill and decoding and self.prefill_first and not self._last_prefill_only:
            self._last_prefill_only = True
            return prefill
        self._last_prefill_only = False
        return [Scheduled(seq, 1, True) for seq in decoding] + prefill

    def _prefill_chunks(self) -> list[Scheduled]:
        plan = []
        budget = self.prefill_chunk
        for seq in self.running:
            pending = seq.num_pending
            if pending > 1 and budget > 0:
                n = min(pending, budget)
                budget -= n
                plan.append(Scheduled(seq, n, n == pending))
        return plan

    def account(self, seq: Sequence, tokens: int) -> None:
        """Charge a sequence for tokens it decoded in the last step."""
        seq.slice_tokens += tokens
        seq.owner.vruntime += tokens / nice_weight(seq.owner.nice)
        runnable = self.running + self.waiting
        if runnable:
            self.min_vruntime = max(self.min_vruntime, min(s.owner.vruntime for s in runnable))

    # -- policy ------------------------------------------------------------------------

    def _preempt_expired(self) -> None:
        for seq in list(self.running):
            if seq.owner.stopped:
                self._preempt(seq)  # a stopped process leaves the batch at once, keeping its KV
            elif (
                self._runnable_waiting()
                and seq.slice_tokens >= self.quantum
                and seq.num_pending <= 1
                and self._prefer_waiting_over(seq)
            ):
                self._preempt(seq)
                self.preemptions += 1

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.status = SeqStatus.WAITING
        seq.slice_tokens = 0
        self.waiting.append(seq)

    def _runnable_waiting(self) -> list[Sequence]:
        return [s for s in self.waiting if not s.owner.stopped]

    def _prefer_waiting_over(self, seq: Sequence) -> bool:
        if self.policy == "rr":
            return True
        waiting = self._runnable_waiting()
        if self.policy == "fair":
            return min(s.owner.vruntime for s in waiting) < seq.owner.vruntime
        return min(s.owner.nice for s in waiting) <= seq.owner.nice

    def admit(self) -> list[Sequence]:
        """Move waiting sequences of processes not stopped into the batch, by the policy, while
        it has room; the ones admitted."""
        admitted = []
        while len(self.running) < self.max_batch:
            candidates = self._runnable_waiting()
            if not candidates:
                break
            seq = self._pick(candidates)
            self.waiting.remove(seq)
            seq.status = SeqStatus.RUNNING
            seq.slice_tokens = 0
            self.running.append(seq)
            admitted.append(seq)
        return admitted

    def _pick(self, candidates: list[Sequence]) -> Sequence:
        if self.policy == "fair":
            return min(candidates, key=lambda s: s.owner.vruntime)
        if self.policy == "priority":
            return min(candidates, key=lambda s: s.owner.nice)  # min() keeps arrival order on ties
        return candidates[0]
