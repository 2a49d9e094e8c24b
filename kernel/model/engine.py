"""The LLM engine: the kernel task that time-slices the shared model.

Loop: ask the scheduler for this step's work, run one batched forward pass (in a worker
thread, so the trio loop keeps serving syscalls, the shell and streams meanwhile), sample, hand
each process its new text, retire finished sequences. Requests join and leave between steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
import trio

from llmos.kernel.model.backend import Backend, StepPlan, WorkItem
from llmos.kernel.model.kvcache import KVPool
from llmos.kernel.proc.process import Process, ProcState
from llmos.kernel.model.sampling import SamplingParams, sample_batch
from llmos.kernel.model.scheduler import Scheduled, Scheduler
from llmos.kernel.model.sequence import Sequence, SeqStatus


class ContextTooLong(ValueError):
    pass


@dataclass
class EngineStats:
    steps: int = 0
    tokens_generated: int = 0
    tokens_prefilled: int = 0
    busy_time: float = 0.0  # seconds inside forward passes
    failed_steps: int = 0  # forward passes that raised; their requests failed with EIO
    batch_sizes: list[int] = field(default_factory=list)  # recent decode batch sizes

    def note_batch(self, n: int) -> None:
        self.batch_sizes.append(n)
        if len(self.batch_sizes) > 256:
            del self.batch_sizes[:128]


class Engine:
    def __init__(self, backend: Backend, scheduler: Scheduler, pool: KVPool, prefix_sharing: bool = True) -> None:
        self.backend = backend
        self.scheduler = scheduler
        self.pool = pool
        self.prefix_sharing = prefix_sharing
        self.stats = EngineStats()
        self._wakeup = trio.Event()
        self._channels: dict[int, trio.MemorySendChannel[str]] = {}  # id(seq) -> text sink
        self._receivers: dict[int, trio.MemoryReceiveChannel[str]] = {}
        self.recorded: list[tuple[list[int], SamplingParams]] | None = None  # set to a list to record calls

    # -- the process side ---------------------------------------------------------------

    def submit_chat(self, proc: Process, messages: list[dict[str, str]], params: SamplingParams) -> Sequence:
        """Queue a chat completion: the messages go through the model's chat template."""
        return self.submit(proc, self.backend.encode_chat(messages), params)

    def submit(self, proc: Process, prompt_ids: list[int], params: SamplingParams) -> Sequence:
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
        if self.recorded is not None:
            self.recorded.append((list(prompt_ids), params))
        seq = Sequence(proc, prompt_ids, params, kv, self.backend.decode, self.backend.eos_ids)
        seq.cached_tokens = kv.length
        send, recv = trio.open_memory_channel[str](math.inf)
        self._channels[id(seq)] = send
        self._receivers[id(seq)] = recv
        self.scheduler.add(seq)
        proc.state, proc.wchan = ProcState.READY, "llm"
        self._wakeup.set()
        return seq

    def wake(self) -> None:
        """Something changed that may let the scheduler make progress (a process continued)."""
        self._wakeup.set()

    def output(self, seq: Sequence) -> trio.MemoryReceiveChannel[str]:
        """The text of a submitted sequence, as it is produced; closed when it finishes."""
        return self._receivers.pop(id(seq))

    def release(self, seq: Sequence) -> None:
        """Called by whoever submitted `seq`, always, when done with it. If it has not finished
        (the process was killed, or the call timed out) it leaves the batch now."""
        self._channels.pop(id(seq), None)
        self._receivers.pop(id(seq), None)
        if seq.status is not SeqStatus.FINISHED:
            seq.cancelled = True
            self.scheduler.remove(seq)
            # A forward pass may still be writing this cache: the process starts a fresh one.
            if seq.owner.kv is seq.kv:
                seq.owner.kv = None
        if seq.owner.wchan == "llm":
            seq.owner.state, seq.owner.wchan = ProcState.RUNNING, ""

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
        for seq in self.scheduler.waiting:
            if not seq.owner.stopped:
                seq.owner.state = ProcState.READY
        for seq in self.scheduler.running:
            seq.owner.state = ProcState.RUNNING
        if not plan:
            return False
        items = [WorkItem(s.seq.kv, s.seq.pending(s.n_tokens), s.want_logits) for s in plan]
        started = time.monotonic()
        try:
            layout = self.backend.plan(items)  # moves caches: here, not in the worker thread
            tokens = await trio.to_thread.run_sync(self._forward, plan, layout)
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
            self._retire(seq)

    def _forward(self, plan: list[Scheduled], layout: StepPlan) -> list[int | None]:
        logits = self.backend.run(layout)
        wanted = [s.seq for s in plan if s.want_logits]
        picked = iter(sample_batch(logits, [q.params for q in wanted], [q.generator for q in wanted]))
        return [next(picked) if s.want_logits else None for s in plan]

    def _finish_step(self, plan: list[Scheduled], items: list[WorkItem], tokens: list[int | None], elapsed: float) -> None:
        for item in items:
            self.pool.touch(item.kv)
        self.pool.enforce(busy={id(s.kv) for s in self.scheduler.running})
        self.stats.steps += 1
        self.stats.busy_time += elapsed
        self.stats.note_batch(len(plan))
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
            proc.generated_tokens += 1
            self.stats.tokens_generated += 1
            self.scheduler.account(seq, 1)
            send = self._channels.get(id(seq))
            if delta and send is not None:
                send.send_nowait(delta)
            if seq.status is SeqStatus.FINISHED:
                self._retire(seq)

    def _retire(self, seq: Sequence) -> None:
        """A finished sequence leaves the batch; its reader sees the end of its text."""
        self.scheduler.remove(seq)
        send = self._channels.get(id(seq))
        if send is not None:
            send.close()

