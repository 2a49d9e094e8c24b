"""The kernel: owns the process table, the LLM engine and every process's life.

Structured like a trio program should be: `Kernel.boot()` opens one nursery; the engine and
a task per process run inside it, and leaving the `async with` cancels them all. A process's
task asks the runner (kernel/proc/runner.py) to run its program — by default in a worker of
its own, an OS process confined by the OS — and turns how it ended into its exit status: a
program that raises becomes a ZOMBIE with its traceback as exit reason, a worker that crashes
one with the signal that killed it; nothing it does reaches the kernel.
"""

from __future__ import annotations

import json
import time
import traceback
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Hashable

import trio

from llmos.abi.errors import Errno, SyscallError, killed
from llmos.abi.proc import EXIT_ERROR, EXIT_KILLED, EXIT_QUOTA, EXIT_TERMINATED, KERNEL_PID
from llmos.abi.program import ProgramError, locate
from llmos.config import KernelConfig
from llmos.kernel.kb import KnowledgeBase
from llmos.kernel.lazymodel import LazyBackend, ModelLoadError
from llmos.kernel.mcp import MountTable
from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.memory.manager import Memory
from llmos.kernel.model.backend import Backend
from llmos.kernel.model.compute import compute
from llmos.kernel.model.engine import ContextTooLong, Engine, Request
from llmos.kernel.model.loader import open_engine
from llmos.kernel.model.remote import is_remote
from llmos.kernel.model.sampling import SamplingParams
from llmos.kernel.proc.capabilities import Capabilities
from llmos.kernel.proc.ipc import Mailboxes, Message
from llmos.kernel.proc.process import Process, ProcessTable, ProcState
from llmos.kernel.proc.quota import tokens_used, wall_time_reason
from llmos.kernel.proc.runner import Exit, Runner
from llmos.kernel.proc.workers import library_paths
from llmos.kernel.state.audit import AuditLog
from llmos.kernel.state.events import Event, EventBus

if TYPE_CHECKING:
    from llmos.kernel.state.journal import Journal

ORPHAN_ZOMBIES_KEPT = 256
MEMORY_CLOSE_SECONDS = 10.0  # at shutdown, for writing out named memories



class TableFull(RuntimeError):
    """No room for another process: the table, or the caller's children or session limit."""


class SenderGone(LookupError):
    """The process a receiver waits for has exited and left no matching message."""


class Kernel:
    def __init__(self, config: KernelConfig, engine: Engine, runner: Runner) -> None:
        self.config = config
        self.engine = engine
        self.backend = engine.model  # the model: its name, tokenizer, context length
        self.scheduler = engine.scheduler
        self.procs = ProcessTable(config.max_processes)
        self.events = EventBus()
        self.embedder = Embedder()  # loaded on first use (memory, knowledge base)
        # opens its store on first use; prompts are held to their budget by the model's chat template
        # (a remote model has none here: the plain format, measured in bytes, stands in)
        self.memory = Memory(
            self.backend.encode, self.backend.decode, self.embedder, config.memory, getattr(self.backend, "encode_chat", None)
        )
        self.runner = runner  # how programs run: in workers, or (trusted) in this process
        self.caps: dict[int, Capabilities] = {}
        self.audit = AuditLog()  # every syscall, one JSON line
        self.mailboxes = Mailboxes()  # ipc.send / ipc.recv
        self.mounts = MountTable()  # MCP servers whose tools are served as syscalls (kernel/mcp.py)
        self._kb: KnowledgeBase | None = None
        self._nursery: trio.Nursery | None = None
        self._flusher = trio.CancelScope()  # the memory's writeback task (Memory.flusher)
        self.started = time.time()
        self._wait_channels: dict[Hashable, trio.lowlevel.ParkingLot] = {}  # key -> processes blocked on it
        self.journal: Journal | None = None  # kernel/state/journal.py, when the daemon keeps state on disk
        self.user_umask = 0o022  # the umask of the user who started the kernel: for files made for agents

    @classmethod
    @asynccontextmanager
    async def boot(
        cls,
        config: KernelConfig | None,
        backend: Backend | None,
        runner: Runner,
    ) -> AsyncIterator["Kernel"]:
        config = config or KernelConfig()
        compute.configure(config.threads)  # from the kernel loop's thread: it computes on one core
        if backend is None and not is_remote(config.model):  # the weights load on the first LLM call
            backend = await trio.to_thread.run_sync(LazyBackend.open, config.model, config.weights, config.threads, config.device)
        kernel = cls(config, await open_engine(config, backend), runner)
        async with trio.open_nursery() as nursery:
            kernel._nursery = nursery
            nursery.start_soon(kernel._run_engine)
            kernel._flusher = await nursery.start(kernel._run_flusher, kernel.memory)
            await nursery.start(runner.serve, kernel)
            try:
                yield kernel
            finally:
                with trio.CancelScope(deadline=trio.current_time() + MEMORY_CLOSE_SECONDS, shield=True):
                    await kernel.memory.close()
                nursery.cancel_scope.cancel()

    @property
    def kb(self) -> KnowledgeBase:
        """The knowledge base (kernel/kb.py), opened on first use; it shares the kernel's embedder."""
        if self._kb is None:
            self._kb = KnowledgeBase(self.embedder)
        return self._kb

    @kb.setter
    def kb(self, kb: KnowledgeBase) -> None:  # (tests and benchmarks point it at a scratch store)
        self._kb = kb

    async def use_memory(self, memory: Memory) -> None:
        """Replace the memory manager (a benchmark's, with its own settings and store); its
        writeback runs as the first one's did."""
        assert self._nursery is not None, "kernel is not booted"
        self._flusher.cancel()
        self.memory = memory
        self._flusher = await self._nursery.start(self._run_flusher, memory)

    async def _run_flusher(self, memory: Memory, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await memory.flusher()

    async def _run_engine(self) -> None:
        """The engine's loop. A model not loaded yet (kernel/lazymodel.py) loads when the first
        request arrives, the requests queueing meanwhile; watchers see it as kernel events."""
        model = self.backend
        if isinstance(model, LazyBackend) and not model.loaded:
            await self.engine.requested()
            self.events.publish(Event(KERNEL_PID, "kernel", f"loading the model {model.name} (first LLM call)…"))
            try:
                await trio.to_thread.run_sync(model.load)
            except ModelLoadError as exc:  # the step that needs it fails its requests with EIO
                self.events.publish(Event(KERNEL_PID, "kernel", str(exc)))
            else:
                self.events.publish(Event(KERNEL_PID, "kernel", f"model {model.name} loaded in {model.load_seconds:.1f} s"))
        await self.engine.run()

    # -- processes -----------------------------------------------------------------------

    def session(self, name: str, caps: Capabilities | None = None) -> Process:
        """A process entry for an external client (the shell, `llmos run`, a daemon client):
        it has no task of its own; its code runs outside and calls in."""
        proc = self._new_process(KERNEL_PID, name, f"<{name}>", [], 0, caps or Capabilities())
        proc.session = True
        proc.set_running()
        return proc

    def spawn(
        self,
        parent: Process | None,
        spec: str,
        args: list[str] | None = None,
        name: str | None = None,
        nice: int = 0,
        caps: Capabilities | None = None,
    ) -> Process:
        """Start program `spec` as a child of `parent`. Its source is found and checked here,
        never run (abi/program.py); the runner starts it. Raises ProgramError, TableFull,
        PermissionError (a program the parent could not read itself)."""
        location = locate(spec)
        ppid = parent.pid if parent else KERNEL_PID
        parent_caps = self.caps.get(ppid) or Capabilities()
        caps = caps or parent_caps
        session_pid = KERNEL_PID
        inherited: tuple[str, ...] = ()
        if parent is not None:  # a child never gets more than its parent has left
            caps = caps.with_quota(caps.quota.within(parent_caps.quota.left_for(parent)))
            session_pid = parent.pid if parent.session else parent.session_pid
            if not parent.session:
                self._check_readable(parent, parent_caps, location.readable)
                inherited = parent.program_folders
            self._check_limits(parent, session_pid)
        proc = self._new_process(ppid, name or _program_name(spec), spec, list(args or []), nice, caps)
        proc.session_pid = session_pid
        proc.location = location
        proc.program_folders = tuple(dict.fromkeys([*inherited, *map(str, location.readable)]))
        if caps.quota.max_wall_time is not None:
            proc.cancel_scope.deadline = trio.current_time() + caps.quota.max_wall_time
        assert self._nursery is not None, "kernel is not booted"
        self._nursery.start_soon(self._run, proc, name=f"pid {proc.pid}")
        return proc

    def _check_readable(self, parent: Process, caps: Capabilities, folders: tuple[Path, ...]) -> None:
        """A process may start only programs it could read itself: inside its root, among its
        own and its ancestors' program folders, or in the Python installation and llmos. (A
        worker may read its program's folder: this keeps a spawn from opening other folders.)
        Sessions — the shell, clients with the token — may start any program."""
        allowed = [caps.fs_root, *map(Path, parent.program_folders), *library_paths()]
        for folder in folders:
            if not any(folder.is_relative_to(a) for a in allowed):
                raise PermissionError(f"program folder {folder} is outside process {parent.pid}'s root and its programs' folders")

    def _check_limits(self, parent: Process, session_pid: int) -> None:
        """A process may have `max_children` live children, and everything started from one
        session (a client), all generations, at most `max_session_processes`: a fork bomb
        fills its own quarter, not the table other clients need."""
        children = sum(1 for p in self.procs.children(parent.pid) if p.alive)
        if children >= self.config.max_children:
            raise TableFull(f"process {parent.pid} has {children} live children, its limit")
        if session_pid != KERNEL_PID:
            started = self.procs.live_in_session(session_pid)
            if started >= self.config.max_session_processes:
                raise TableFull(f"session {session_pid} has {started} live processes, its limit")

    def _new_process(self, ppid: int, name: str, spec: str, args: list[str], nice: int, caps: Capabilities) -> Process:
        if self.procs.live_count() >= self.config.max_processes:
            raise TableFull(f"process table is full ({self.config.max_processes} live processes)")
        proc = Process(pid=self.procs.allocate_pid(), ppid=ppid, name=name, program=spec, args=args, nice=nice)
        self.procs.add(proc)
        self.caps[proc.pid] = caps
        self.events.publish(Event(proc.pid, "spawn", f"{name} ({spec}) {' '.join(args)}".strip()))
        return proc

    async def _run(self, proc: Process) -> None:
        """The process's task: its program runs (in its worker) until it ends, is killed, or
        passes its wall-time deadline (the cancel scope's)."""
        with proc.cancel_scope:
            proc.set_running()
            try:
                ended = await self.runner.run(proc)
            except trio.Cancelled:
                raise
            except Exception as exc:  # the runner's bug: the process dies of it, the kernel goes on
                ended = Exit(EXIT_ERROR, "the runner failed: " + "".join(traceback.format_exception(exc)).rstrip())
            if not proc.killed:  # (killed from within a syscall, a quota: it dies of that, below)
                self.exit(proc, ended.code, ended.reason, ended.result)
        if proc.alive:  # our cancel scope absorbed a kill, or its wall-time deadline passed
            if not proc.killed:
                proc.killed = True
                proc.kill_code, proc.kill_reason = EXIT_QUOTA, wall_time_reason(self.caps[proc.pid].quota.max_wall_time)
            self.exit(proc, proc.kill_code, proc.kill_reason)

    def exit(self, proc: Process, code: int, reason: str, result: Any = None) -> None:
        """The process is done: it becomes a ZOMBIE holding its status and result until its
        parent reaps it; its children are adopted by the kernel; its resources are freed."""
        if not proc.alive:
            return
        proc.exit_code, proc.exit_reason, proc.result = code, reason, _jsonable(result)
        proc.set_zombie()
        proc.ended = time.time()
        self.engine.retire(proc)  # its KV cache joins the prefix cache
        proc.kv = None
        self._release_memory(proc)
        for child in self.procs.children(proc.pid):
            child.ppid = KERNEL_PID  # orphans are adopted by the kernel
            if not child.alive:
                self.procs.remove(child.pid)
        self.mailboxes.close(proc.pid)
        proc.exited.set()
        self.wakeup(("proc.wait", proc.ppid))  # a parent waiting for a child
        self.wakeup(("proc.wait", KERNEL_PID))
        for key in [k for k in self._wait_channels if k[0] == "ipc.recv"]:
            self.wakeup(key)  # a receiver may be waiting for a message from this very process
        first_line = reason.splitlines()[-1] if reason else ""
        self.events.publish(Event(proc.pid, "exit", f"exit {code}: {first_line}"))
        if proc.session:
            self.procs.remove(proc.pid)  # a closed session leaves nothing to reap
        self._reap_old_orphans()
        self.commit()

    def _reap_old_orphans(self) -> None:
        """Orphans' zombies stay visible (a daemon client may come back for the result), but
        the kernel reaps the oldest beyond ORPHAN_ZOMBIES_KEPT so a long-lived kernel cannot
        fill its table with them. Reaped records stay readable (ProcessTable.reaped)."""
        orphans = [p for p in self.procs if p.ppid == KERNEL_PID and not p.alive and not p.session]
        for proc in orphans[: max(0, len(orphans) - ORPHAN_ZOMBIES_KEPT)]:
            self.procs.remove(proc.pid)

    def commit(self) -> None:
        """Make the process table durable now, when a journal keeps it (kernel/state/journal.py)."""
        if self.journal is not None:
            self.journal.commit(self)

    def _release_memory(self, proc: Process) -> None:
        cleanup = self.memory.release(proc.pid)  # store work (deleting, writing out) runs apart
        if cleanup is not None and self._nursery is not None:
            self._nursery.start_soon(cleanup, name=f"memory cleanup of pid {proc.pid}")

    def end_session(self, proc: Process) -> None:
        self.exit(proc, 0, "exited")

    def kill(self, proc: Process, terminate: bool = False, reason: str | None = None, code: int | None = None) -> None:
        """Cancel the process's task: its `finally` blocks run, its syscalls end, it exits
        137 "killed" (or 143 "terminated", or `code` with `reason`, e.g. a quota's)."""
        if not proc.alive or proc.killed:
            return
        proc.killed = True
        proc.kill_reason = reason or ("terminated" if terminate else "killed")
        proc.kill_code = code if code is not None else EXIT_TERMINATED if terminate else EXIT_KILLED
        if not proc.exec_pending:  # (a restored process has nothing to run: it just ends)
            self.cont(proc)  # a stopped process must run to die
        self.events.publish(Event(proc.pid, "signal", proc.kill_reason))
        if proc.session or proc.exec_pending:  # no task of its own to cancel
            self.exit(proc, proc.kill_code, proc.kill_reason)
        else:
            self.runner.signal(proc, "kill")  # a worker stops now, not at the task's next checkpoint
            proc.cancel_scope.cancel()  # its task reaps the worker and records the exit

    def enforce_quota(self, proc: Process, pages: int | None = None) -> bool:
        """Kill `proc` if it is over its quota; True if it may go on. Called by dispatch on every
        syscall, by llm.chat on every token, and by the memory manager with the number of
        context pages the process would hold (`pages`)."""
        reason = self.caps[proc.pid].quota.exceeded(proc, pages)
        if reason is not None:
            self.kill(proc, reason=reason, code=EXIT_QUOTA)
        return reason is None

    async def chat(
        self,
        proc: Process,
        messages: list[dict[str, str]],
        params: SamplingParams,
        on_text: Callable[[str], Awaitable[None]] | None = None,
        constraint: Any = None,
    ) -> Request:
        """A completion for `proc` from the shared model, scheduled with everyone else's; its
        text goes to `on_text` as it is generated, held to `constraint` (engine.constrain's). The token quota is enforced on every token:
        at most one token past the limit is generated (the one that kills), and a prompt alone
        over it is never generated. Errors: EBUSY (a chat already in progress), E2BIG (longer
        than the context), EKILLED (over quota, or killed meanwhile), EIO (the model failed)."""
        if proc.wchan == "llm":
            raise SyscallError(Errno.EBUSY, f"process {proc.pid} already has an llm.chat in progress")
        try:
            request = self.engine.submit_chat(proc, messages, params, constraint)
        except ContextTooLong as exc:
            raise SyscallError(Errno.E2BIG, str(exc)) from None
        try:
            quota = self.caps[proc.pid].quota
            if quota.max_tokens is not None:
                # Nothing has run yet (the engine steps only when this task yields): cap the
                # request so the token that crosses the limit is the last one.
                left = quota.max_tokens - tokens_used(proc) + 1
                request.params.max_tokens = min(request.params.max_tokens, max(1, left))
            if not self.enforce_quota(proc):  # the prompt alone went over
                raise killed(proc.pid, proc.kill_reason)
            async for delta in self.engine.output(request):
                if not self.enforce_quota(proc):  # max_tokens: stop generating at once
                    raise killed(proc.pid, proc.kill_reason)
                self.events.publish(Event(proc.pid, "text", delta))
                if on_text is not None:
                    await on_text(delta)
        finally:
            self.engine.release(request)
        if request.error is not None:
            raise SyscallError(Errno.EIO, f"the model failed on this request: {request.error}")
        self.events.publish(Event(proc.pid, "text", "\n"))
        proc.write_log("llm", f"[{request.completion_tokens} tokens, {request.finish_reason}] {request.text}")
        return request

    def record_llm_calls(self) -> list[tuple[Any, SamplingParams]]:
        """From now on, every LLM request (its prompt and sampling parameters) is kept in the
        list returned: what the demo replays through a plain `generate` to compare."""
        self.engine.recorded = []
        return self.engine.recorded

    async def start_service(self, async_fn: Callable[..., Any], *args: Any, name: str) -> Any:
        """Run a kernel service task (an MCP server connection) in the kernel's nursery: it
        outlives the syscall that started it and ends with the kernel. `async_fn` must accept
        `task_status` and must not raise (an exception here would stop the kernel)."""
        assert self._nursery is not None, "kernel is not booted"
        return await self._nursery.start(async_fn, *args, name=name)

    def stop(self, proc: Process) -> None:
        """SIGSTOP: the process makes no progress (no syscall returns, no tokens) until `cont`.
        Its KV cache and batch bookkeeping are kept, so it resumes without prefilling. What it
        was doing goes on underneath (a sleep runs out, a wait ends) but it returns only once
        continued."""
        if not proc.set_stopped():
            return
        if not proc.session:
            self.runner.signal(proc, "stop")  # a worker: SIGSTOP, so its own code stops too
        self.events.publish(Event(proc.pid, "signal", "stopped"))

    def cont(self, proc: Process) -> None:
        if not proc.set_continued():
            return
        if not proc.session and not proc.exec_pending:
            self.runner.signal(proc, "cont")
        self.engine.wake()
        self.events.publish(Event(proc.pid, "signal", "continued"))
        if proc.exec_pending:
            self._exec(proc)

    def _exec(self, proc: Process) -> None:
        """Start a restored process's program again from its spec: a coroutine cannot be
        checkpointed mid-flight, so what survives a restart is its record, log and memory."""
        proc.exec_pending = False
        try:
            location = locate(proc.program)
        except ProgramError as exc:
            self.exit(proc, EXIT_ERROR, f"cannot restart: {exc}")
            return
        proc.location = location
        proc.program_folders = tuple(dict.fromkeys([*proc.program_folders, *map(str, location.readable)]))
        limit = self.caps[proc.pid].quota.max_wall_time
        if limit is not None:  # wall time counts from the original spawn: it is the same process
            proc.cancel_scope.deadline = trio.current_time() + limit - (time.time() - proc.created)
        assert self._nursery is not None, "kernel is not booted"
        self._nursery.start_soon(self._run, proc, name=f"pid {proc.pid}")

    async def wait(self, parent: Process, pid: int | None) -> Process | None:
        """Wait for a child (a given one, or any) to exit and reap it. None if there is no such
        child. The parent is BLOCKED on "proc.wait" meanwhile."""
        while True:
            children = [c for c in self.procs.children(parent.pid) if pid is None or c.pid == pid]
            if not children:
                return None
            for child in children:
                if not child.alive:
                    self.procs.remove(child.pid)
                    return child
            await self.block(parent, "proc.wait", ("proc.wait", parent.pid))

    # -- sleep and wakeup: how a process waits (xv6's sleep/wakeup) ---------------------------

    async def block(self, proc: Process, wchan: str, key: Hashable) -> None:
        """Park `proc` on the wait channel `key` until `wakeup(key)`; it is BLOCKED on `wchan`
        meanwhile. A wakeup says something changed, not what: callers look again and block
        again if need be. Nothing polls a blocked process."""
        lot = self._wait_channels.get(key)
        if lot is None:
            lot = self._wait_channels[key] = trio.lowlevel.ParkingLot()
        proc.set_waiting(ProcState.BLOCKED, wchan)
        try:
            await lot.park()
        finally:
            if self._wait_channels.get(key) is lot and not lot:
                del self._wait_channels[key]
            proc.set_running()

    def wakeup(self, key: Hashable) -> None:
        lot = self._wait_channels.pop(key, None)
        if lot is not None:
            lot.unpark_all()

    async def sleep(self, proc: Process, seconds: float) -> None:
        """SLEEPING for `seconds`; its KV cache stays retained."""
        proc.set_waiting(ProcState.SLEEPING, "sleep")
        try:
            await trio.sleep(seconds)
        finally:
            proc.set_running()

    async def held(self, proc: Process) -> None:
        """Return once `proc` is not stopped: where a syscall enters and leaves the kernel, as
        signals are delivered on the way back to user space."""
        while proc.stopped:
            await proc.continued.wait()

    # -- messages -----------------------------------------------------------------------------

    def send(self, message: Message) -> int:
        """Put a message in its receiver's mailbox (MailboxFull if it has no room); the number
        now waiting there."""
        self.mailboxes.send(message)
        self.wakeup(("ipc.recv", message.to))
        return self.mailboxes.pending(message.to)

    async def receive(self, proc: Process, sender: int | None, tag: str | None) -> Message:
        """The oldest message for `proc` from `sender` with `tag` (None: any), waiting for one
        (BLOCKED on "ipc.recv"). Raises SenderGone when the awaited sender has exited and left
        no such message. Returns only once `proc` is not stopped; a message taken by a call
        cancelled meanwhile goes back to the head of the mailbox."""
        while (message := self.mailboxes.take(proc.pid, sender, tag)) is None:
            if sender is not None and not self._alive(sender):
                raise SenderGone(sender)
            await self.block(proc, "ipc.recv", ("ipc.recv", proc.pid))
        try:
            await self.held(proc)
        except BaseException:
            self.mailboxes.put_back(message)
            self.wakeup(("ipc.recv", proc.pid))
            raise
        return message

    def _alive(self, pid: int) -> bool:
        p = self.procs.get(pid)
        return p is not None and p.alive


def _program_name(spec: str) -> str:
    base = spec.rstrip("/").rsplit("/", 1)[-1]
    base = base.split(":", 1)[0]
    return base[:-3] if base.endswith(".py") else base.rsplit(".", 1)[-1]


def _jsonable(value: Any) -> Any:
    """A process result crosses the syscall boundary, perhaps over a socket: keep it JSON."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
