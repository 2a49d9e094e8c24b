"""The LLM engine: the kernel task that time-slices the shared model.

`Engine` is what the kernel and `llm.chat` ask of any engine: submit a chat for a process,
stream its text, release it; the engine runs as one kernel task. It keeps the request streams
and the states they imply (READY while queued, RUNNING in the batch, back to its own code
when released) in one place for every engine. Two engines implement it: `BatchEngine` here
(the local model) and `RemoteEngine` (kernel/model/remote.py: an OpenAI-protocol server).
Both queue their requests in the same Scheduler, so admission and policies are one code.

BatchEngine's loop: ask the scheduler for this step's work, run one batched forward pass (in
a worker thread, so the trio loop keeps serving syscalls, the shell and streams meanwhile),
sample, hand each process its new text, retire finished sequences. Requests join and leave
between steps.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Protocol

import torch
import trio

from llmos.abi.proc import ProcState
from llmos.kernel.model.backend import Backend, StepPlan, WorkItem
from llmos.kernel.model.compute import compute
from llmos.kernel.model.constraint import Constraint, ConstraintSpec, apply_masks
from llmos.kernel.model.kvcache import KVPool, KVStats
from llmos.kernel.model.sampling import SamplingParams, sample_batch
from llmos.kernel.model.scheduler import Scheduled, Scheduler
from llmos.kernel.model.sequence import SeqStatus, Sequence
from llmos.kernel.proc.process import Process


class ContextTooLong(ValueError):
    pass


TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class LatencyHistogram:
    """Cumulative counts of latencies (seconds) by upper bound, as Prometheus histograms keep
    them; the last count is everything above the largest bound."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


@dataclass
class EngineStats:
    steps: int = 0
    tokens_generated: int = 0
    tokens_prefilled: int = 0
    busy_time: float = 0.0  # seconds inside forward passes
    failed_steps: int = 0  # forward passes that raised; their requests failed with EIO
    mask_time: float = 0.0  # seconds computing, applying and advancing constraints (in busy_time)
    masked_rows: int = 0  # next tokens chosen under a constraint
    closing_rows: int = 0  # of those, chosen among closing tokens only (constraint.CLOSING_RESERVE)
    masked_steps: int = 0  # steps that chose at least one token under a constraint
    masked_step_time: float = 0.0  # seconds of those steps (masking's share: mask_time / this)
    batch_sizes: list[int] = field(default_factory=list)  # recent decode batch sizes
    ttft: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(TTFT_BUCKETS))  # submit -> first token
    inter_token: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(INTER_TOKEN_BUCKETS))

    def note_batch(self, n: int) -> None:
        self.batch_sizes.append(n)
        if len(self.batch_sizes) > 256:
            del self.batch_sizes[:128]


@dataclass
class KVUsage:
    """The KV cache an engine holds for processes (none for a remote model: the server's)."""

    used_bytes: int = 0
    budget_bytes: int = 0
    retired: int = 0  # exited processes' caches held now, in the prefix cache
    retired_bytes: int = 0
    counts: KVStats = field(default_factory=KVStats)  # evictions and the prefix cache's hits, all time


class Model(Protocol):
    """The model behind an engine, as the rest of the kernel sees it."""

    name: str
    max_context: int

    @property
    def model_id(self) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class Request(Protocol):
    """One submitted chat, as llm.chat reads it back."""

    owner: Process
    params: SamplingParams
    status: SeqStatus
    text: str
    finish_reason: str | None
    error: str | None
    cached_tokens: int
    first_token_at: float | None
    cancelled: bool

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...


class Engine:
    """What the kernel asks of an LLM engine, and the part every engine shares: each request's
    text stream and the process states it implies."""

    model: Model

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler  # its waiting/running lists are the queue (kernel.stat shows them)
        self.stats = EngineStats()
        self._wakeup = trio.Event()
        self._channels: dict[int, trio.MemorySendChannel[str]] = {}  # id(request) -> text sink
        self._receivers: dict[int, trio.MemoryReceiveChannel[str]] = {}
        self._last_token_at: dict[int, float] = {}  # id(request) -> when its latest token came
        self.recorded: list[tuple[Any, SamplingParams]] | None = None  # a list: every request is kept there

    async def constrain(self, spec: ConstraintSpec) -> Any:
        """What submit_chat takes as `constraint` for a response format (compiled, or checked
        and passed on); InvalidConstraint says what is wrong with it."""
        raise NotImplementedError

    def submit_chat(
        self, proc: Process, messages: list[dict[str, str]], params: SamplingParams, constraint: Any = None
    ) -> Request:
        """Queue a chat completion for `proc` (which is READY on "llm" until it is in the batch),
        its reply held to `constraint` (from `constrain`) if given."""
        raise NotImplementedError

    async def run(self) -> None:
        """The engine's kernel task."""
        raise NotImplementedError

    def kv_usage(self) -> KVUsage:
        return KVUsage()

    def retire(self, proc: Process) -> None:
        """`proc` exited: what it holds in the engine goes (an engine with a prefix cache keeps it)."""
        proc.kv = None

    def _queue(self, proc: Process, request: Any, recorded: Any) -> None:
        send, recv = trio.open_memory_channel[str](math.inf)
        self._channels[id(request)], self._receivers[id(request)] = send, recv
        if self.recorded is not None:
            self.recorded.append((recorded, request.params))
        self.scheduler.add(request)
        proc.set_waiting(ProcState.READY, "llm")
        self._wakeup.set()

    def output(self, request: Request) -> AsyncIterator[str]:
        """The text of a submitted request as it is produced; ends when the request finishes
        (then `request.error` says whether it failed)."""
        return self._receivers.pop(id(request))

    def release(self, request: Request) -> None:
        """Called by whoever submitted `request`, always, when done with it. If it has not
        finished (the process was killed, or the call timed out) it leaves the batch now."""
        self._channels.pop(id(request), None)
        self._receivers.pop(id(request), None)
        self._last_token_at.pop(id(request), None)
        if request.status is not SeqStatus.FINISHED:
            request.cancelled = True
            self.scheduler.remove(request)
            self._abandon(request)
        if request.owner.wchan == "llm":
            request.owner.set_running()

    def _abandon(self, request: Any) -> None:
        """Whatever an engine must undo for a request released before it finished."""

    async def requested(self) -> None:
        """Return once a request has been submitted (the kernel loads a lazy model then)."""
        while not len(self.scheduler):
            await self._wakeup.wait()
            self._wakeup = trio.Event()

    def wake(self) -> None:
        """Something changed that may let the scheduler make progress (a process continued)."""
        self._wakeup.set()

    def _emit(self, request: Any, delta: str) -> None:
        send = self._channels.get(id(request))
        if delta and send is not None:
            send.send_nowait(delta)

    def _time_token(self, request: Any) -> None:
        """TTFT for a request's first token, inter-token latency for the others."""
        now = time.monotonic()
        last = self._last_token_at.get(id(request))
        if last is None:
            self.stats.ttft.observe(now - request.arrived)
        else:
            self.stats.inter_token.observe(now - last)
        self._last_token_at[id(request)] = now

    def _end(self, request: Any) -> None:
        """A finished request leaves the queue; its reader sees the end of its text."""
        self._last_token_at.pop(id(request), None)
        self.scheduler.remove(request)
        send = self._channels.get(id(request))
        if send is not None:
            send.close()

    def _note_batch(self) -> None:
        """Every queued process shows where it is: READY waiting, RUNNING in the batch."""
        for request in self.scheduler.waiting:
            request.owner.set_waiting(ProcState.READY, "llm")
        for request in self.scheduler.running:
            request.owner.set_running("llm")


class BatchEngine(Engine):
    """The local model: every process's tokens in one batched forward pass per step."""

    def __init__(self, backend: Backend, scheduler: Scheduler, pool: KVPool, prefix_sharing: bool = True) -> None:
        super().__init__(scheduler)
        self.backend = self.model = backend
        self.pool = pool
        self.prefix_sharing = prefix_sharing

    def kv_usage(self) -> KVUsage:
        pool = self.pool
        return KVUsage(pool.used_bytes(), pool.budget_bytes, pool.retired_count, pool.retired_bytes(), replace(pool.stats))

    # -- the process side ---------------------------------------------------------------

    async def constrain(self, spec: ConstraintSpec) -> Constraint:
        """Compile a constraint for a request (in a worker thread: a schema takes milliseconds,
        the tokenizer's tables a second the first time). InvalidConstraint says what is wrong."""
        return await trio.to_thread.run_sync(self.backend.grammars.compile, spec)

    def submit_chat(
        self, proc: Process, messages: list[dict[str, str]], params: SamplingParams, constraint: Constraint | None = None
    ) -> Sequence:
        """Queue a chat completion: the messages go through the model's chat template."""
        return self.submit(proc, self.backend.encode_chat(messages), params, constraint)

    def submit(
        self, proc: Process, prompt_ids: list[int], params: SamplingParams, constraint: Constraint | None = None
    ) -> Sequence:
        """Queue one completion for `proc`. Whatever prefix of the prompt the process's retained
        KV cache already holds is reused, not prefilled again."""
        room = self.backend.max_context - len(prompt_ids)
        if room < 1 or not prompt_ids:
            raise ContextTooLong(
                f"prompt is {len(prompt_ids)} tokens; the model's context holds {self.backend.max_context}"
            )
        params.max_tokens = min(params.max_tokens, room)
        if proc.kv is not None:
            kv = proc.kv
        elif self.prefix_sharing:  # a new context: perhaps an exited process's cache starts it
            kv = self.pool.acquire(prompt_ids[:-1])
        else:
            kv = self.pool.new()
        kv.restore()
        # Keep the cached prefix, but always feed the last prompt token: its logits are needed.
        kv.truncate(min(kv.common_prefix(prompt_ids), len(prompt_ids) - 1))
        if self.prefix_sharing:
            self.pool.share_prefix(kv, prompt_ids[:-1])
        self.pool.note_prompt(len(prompt_ids) - 1, kv.length)
        proc.kv = kv
        proc.prompt_tokens += len(prompt_ids)
        seq = Sequence(proc, prompt_ids, params, kv, self.backend.decode, self.backend.eos_ids)
        seq.cached_tokens = kv.length
        seq.constraint = constraint
        self._queue(proc, seq, list(prompt_ids))
        return seq

    def _abandon(self, seq: Sequence) -> None:
        # A forward pass may still be writing this cache: the process starts a fresh one.
        if seq.owner.kv is seq.kv:
            seq.owner.kv = None

    def retire(self, proc: Process) -> None:
        """`proc` exited: its KV cache joins the prefix cache (kvcache.KVPool.retire), unless a
        sequence of it is still queued or in the batch (a killed session's request, whose
        release has not run yet): that cache may still be written, so nobody may reuse it."""
        kv, proc.kv = proc.kv, None
        if kv is None or not self.prefix_sharing:
            return
        if any(seq.kv is kv for seq in self.scheduler.running + self.scheduler.waiting):
            return
        self.pool.retire(kv)

    # -- the kernel side ----------------------------------------------------------------

    async def run(self) -> None:
        while True:
            if not await self._step():
                await self._wakeup.wait()
                self._wakeup = trio.Event()

    async def _step(self) -> bool:
        """One scheduling round and forward pass; False when there is nothing to run (nobody
        wants the model, or everyone who does is stopped). Its own frame, so that no cache
        stays referenced from the loop once its process is gone."""
        plan = self.scheduler.schedule() if len(self.scheduler) else []
        self._note_batch()
        if not plan:
            return False
        items = [WorkItem(s.seq.kv, s.seq.pending(s.n_tokens), s.want_logits) for s in plan]
        started = time.monotonic()
        try:
            layout = self.backend.plan(items)  # moves caches: here, on the kernel loop, not the compute thread
            tokens = await compute.run(self._forward, plan, layout)
        except Exception as exc:  # out of memory, a bug: the requests in this step fail, not the kernel
            self._fail_step(plan, f"{type(exc).__name__}: {exc}")
            return True
        self._finish_step(plan, items, tokens, time.monotonic() - started)
        return True

    def _fail_step(self, plan: list[Scheduled], error: str) -> None:
        self.stats.failed_steps += 1
        for s in plan:
            seq = s.seq
            seq.kv.drop()  # it may be half written; the process prefills again next time
            seq.error = error
            seq.status, seq.finish_reason = SeqStatus.FINISHED, "error"
            self._end(seq)

    def _forward(self, plan: list[Scheduled], layout: StepPlan) -> list[int | None]:
        sampled = [s.seq for s in plan if s.want_logits]
        # A request that ignores end tokens never samples one (as llama.cpp's server and
        # transformers' min_new_tokens do), unless a constraint decides: the text goes on
        # coherently, and a conversation sent back retokenizes to the tokens its cache holds.
        banning = [seq.params.ignore_eos and seq.constraint is None for seq in sampled]
        # Greedy, unconstrained rows read only their logits' argmax (a mask could rule it out).
        layout.argmax_only = all(seq.params.temperature <= 0.0 and seq.constraint is None for seq in sampled) and (
            all(banning) or not any(banning))
        ends = sorted(self.backend.eos_ids)
        layout.banned = tuple(ends) if layout.argmax_only and any(banning) else ()
        logits = self.backend.run(layout)
        if any(banning):  # (again after a screened head: not every head screens)
            rows = torch.tensor([row for row, ban in enumerate(banning) if ban])
            with torch.inference_mode():  # (the logits are the forward pass's)
                logits[rows.unsqueeze(1), torch.tensor(ends).unsqueeze(0)] = float("-inf")
        constrained = [
            (row, seq.constraint, seq.params.max_tokens - seq.completion_tokens)
            for row, seq in enumerate(sampled)
            if seq.constraint is not None
        ]
        if constrained:
            self._mask(logits, constrained)
        picks = sample_batch(logits, [seq.params for seq in sampled], [seq.generator for seq in sampled])
        if constrained:
            started = time.perf_counter()
            for row, constraint, _ in constrained:
                constraint.advance(picks[row])
            self.stats.mask_time += time.perf_counter() - started
        rows = iter(picks)
        return [next(rows) if s.want_logits else None for s in plan]

    def _mask(self, logits: torch.Tensor, constrained: list[tuple[int, Constraint, int]]) -> None:
        """Mask the logits of constrained rows to what their constraints allow: one bitmask row
        each, filled by the grammar library, applied in one call. A constraint that allows
        nothing (its matcher failed) is left unmasked: its token ends it with the error.
        Each row comes with the tokens left in its budget (a constraint closes as they run out)."""
        started = time.perf_counter()
        bitmask = torch.empty(len(constrained), constrained[0][1].words, dtype=torch.int32)
        for i, (_, constraint, remaining) in enumerate(constrained):
            self.stats.closing_rows += constraint.fill(bitmask[i], remaining)
        allows = bitmask.any(dim=1).tolist()
        rows = [row for (row, _, _), ok in zip(constrained, allows) if ok]
        if rows:
            apply_masks(logits, rows, bitmask[torch.tensor(allows)] if not all(allows) else bitmask)
        self.stats.mask_time += time.perf_counter() - started
        self.stats.masked_rows += len(constrained)

    def _finish_step(self, plan: list[Scheduled], items: list[WorkItem], tokens: list[int | None], elapsed: float) -> None:
        for item in items:
            self.pool.touch(item.kv)
        self.pool.enforce(busy={id(s.kv) for s in self.scheduler.running})
        self.stats.steps += 1
        self.stats.busy_time += elapsed
        self.stats.note_batch(len(plan))
        if any(s.want_logits and s.seq.constraint is not None for s in plan):
            self.stats.masked_steps += 1
            self.stats.masked_step_time += elapsed
        for s, item, token in zip(plan, items, tokens):
            seq, proc = s.seq, s.seq.owner
            if seq.cancelled:
                continue
            proc.llm_time += elapsed
            if len(item.tokens) > 1:
                self.stats.tokens_prefilled += len(item.tokens)
            if token is None:
                continue
            delta = seq.append(token)
            self._time_token(seq)
            proc.generated_tokens += 1
            self.stats.tokens_generated += 1
            self.scheduler.account(seq, 1)
            self._emit(seq, delta)
            if seq.status is SeqStatus.FINISHED:
                self._end(seq)

