"""The kernel: owns the process table, the LLM engine and the tasks processes run in.

Structured like a trio program should be: `Kernel.boot()` opens one nursery; the engine and
every process run inside it, and leaving the `async with` cancels them all. A process that
raises becomes a ZOMBIE with its traceback as exit reason; nothing it does reaches the kernel.
"""

from __future__ import annotations

import json
import time
import traceback
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

import trio

from llmos.config import KernelConfig
from llmos.kernel.proc import program
from llmos.kernel.state.audit import AuditLog
from llmos.kernel.model.backend import Backend
from llmos.kernel.proc.capabilities import Capabilities
from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.model.engine import Engine
from llmos.kernel.state.events import Event, EventBus
from llmos.kernel.proc.ipc import Mailboxes
from llmos.kernel.model.kvcache import KVPool
from llmos.kernel.memory.manager import Memory
from llmos.kernel.proc.process import Process, ProcessTable, ProcState
from llmos.kernel.proc.quota import EXIT_QUOTA, wall_time_reason
from llmos.kernel.model.remote import RemoteModel, is_remote
from llmos.kernel.model.scheduler import Scheduler

if TYPE_CHECKING:
    from llmos.kernel.state.journal import Journal

KERNEL_PID = 0
EXIT_ERROR = 1
EXIT_KILLED = 137  # 128 + SIGKILL, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
ORPHAN_ZOMBIES_KEPT = 256
MEMORY_CLOSE_SECONDS = 10.0  # at shutdown, for writing out named memories

HandleFactory = Callable[["Kernel", Process], Any]


class ProcessExit(BaseException):
    """Raised inside a process by `proc.exit`; a BaseException so that an agent's
    `except Exception` cannot swallow it."""

    def __init__(self, code: int, result: Any = None) -> None:
        super().__init__(code)
        self.code = code
        self.result = result


class TableFull(RuntimeError):
    pass


class Kernel:
    def __init__(self, config: KernelConfig, backend: Backend | RemoteModel, handle_factory: HandleFactory) -> None:
        self.config = config
        self.backend = backend
        self.scheduler = Scheduler(
            config.policy, config.max_batch, config.quantum, config.prefill_chunk, config.prefill_first
        )
        if isinstance(backend, RemoteModel):  # an OpenAI-protocol server: kernel/model/remote.py
            self.engine = backend.new_engine(self.scheduler)
        else:
            pool = KVPool(backend.shape, int(config.kv_budget_mb * 2**20), config.kv_eviction)
            self.engine = Engine(backend, self.scheduler, pool, config.prefix_sharing)
        self.procs = ProcessTable(config.max_processes)
        self.events = EventBus()
        self.embedder = Embedder()  # loaded on first use (memory, knowledge base)
        self.memory = Memory(backend.encode, backend.decode, self.embedder, config.memory)  # opens its store on first use
        self.handle_factory = handle_factory
        self.caps: dict[int, Capabilities] = {}
        self.audit = AuditLog()  # every syscall, one JSON line
        self.mailboxes = Mailboxes()  # ipc.send / ipc.recv
        self.mounted: dict[str, Any] = {}  # syscalls added at run time (MCP tools): name -> Syscall
        self.mounts: dict[str, Any] = {}  # MCP servers mounted: prefix -> Mount (syscalls/mcp.py)
        self.kb: Any = None  # the knowledge base (kernel/kb.py), opened on first use
        self._nursery: trio.Nursery | None = None
        self.started = time.time()
        self._exits = trio.Event()  # set (and replaced) whenever a process exits
        self.journal: Journal | None = None  # kernel/state/journal.py, when the daemon keeps state on disk

    @classmethod
    @asynccontextmanager
    async def boot(
        cls,
        config: KernelConfig | None = None,
        backend: Backend | None = None,
        handle_factory: HandleFactory | None = None,
    ) -> AsyncIterator["Kernel"]:
        config = config or KernelConfig()
        if backend is None and is_remote(config.model):
            backend = await RemoteModel.open(config.model)
        elif backend is None:
            backend = await trio.to_thread.run_sync(Backend.load, config.model, config.weights, config.threads, config.device)
        if handle_factory is None:
            from llmos.runtime import local_handle  # the SDK sits above the kernel

            handle_factory = local_handle
        kernel = cls(config, backend, handle_factory)
        async with trio.open_nursery() as nursery:
            kernel._nursery = nursery
            nursery.start_soon(kernel.engine.run)
            try:
                yield kernel
            finally:
                with trio.CancelScope(deadline=trio.current_time() + MEMORY_CLOSE_SECONDS, shield=True):
                    await kernel.memory.close()
                nursery.cancel_scope.cancel()

    # -- processes -----------------------------------------------------------------------

    def session(self, name: str, caps: Capabilities | None = None) -> Process:
        """A process entry for an external client (the shell, `llmos run`, a daemon client):
        it has no task of its own; its code runs outside and calls in."""
        proc = self._new_process(KERNEL_PID, name, f"<{name}>", [], 0, caps or Capabilities(), ProcState.RUNNING)
        proc.session = True
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
        """Load `spec` and start it as a child of `parent`. Raises program.ProgramError, TableFull."""
        entry = program.load(spec)
        ppid = parent.pid if parent else KERNEL_PID
        parent_caps = self.caps.get(ppid) or Capabilities()
        caps = caps or parent_caps
        if parent is not None:  # a child never gets more than its parent has left
            caps = caps.with_quota(caps.quota.within(parent_caps.quota.left_for(parent)))
        proc = self._new_process(ppid, name or _program_name(spec), spec, list(args or []), nice, caps)
        if caps.quota.max_wall_time is not None:
            proc.cancel_scope.deadline = trio.current_time() + caps.quota.max_wall_time
        assert self._nursery is not None, "kernel is not booted"
        self._nursery.start_soon(self._run, proc, entry, name=f"pid {proc.pid}")
        return proc

    def _new_process(
        self, ppid: int, name: str, spec: str, args: list[str], nice: int, caps: Capabilities, state=ProcState.READY
    ) -> Process:
        if self.procs.live_count() >= self.config.max_processes:
            raise TableFull(f"process table is full ({self.config.max_processes} live processes)")
        proc = Process(pid=self.procs.allocate_pid(), ppid=ppid, name=name, program=spec, args=args, nice=nice)
        proc.state = state
        self.procs.add(proc)
        self.caps[proc.pid] = caps
        self.events.publish(Event(proc.pid, "spawn", f"{name} ({spec}) {' '.join(args)}".strip()))
        return proc

    async def _run(self, proc: Process, entry: program.Entry) -> None:
        handle = self.handle_factory(self, proc)
        with proc.cancel_scope:
            proc.state = ProcState.RUNNING
            try:
                result = await entry(handle, proc.args)
            except ProcessExit as exc:
                self._exit(proc, exc.code, "exited", exc.result)
            except trio.Cancelled:
                raise
            except BaseException as exc:  # the agent's bug, never the kernel's
                if proc.killed:
                    pass  # killed from within a syscall (a quota): it dies of that, below
                elif isinstance(exc, SystemExit):
                    self._exit(proc, exc.code if isinstance(exc.code, int) else EXIT_ERROR, "exited")
                else:
                    self._exit(proc, EXIT_ERROR, "".join(traceback.format_exception(exc)).rstrip())
            else:
                if not proc.killed:
                    self._exit(proc, 0, "exited", result)
        if proc.alive:  # our cancel scope absorbed a kill, or its wall-time deadline passed
            if not proc.killed:
                proc.killed = True
                proc.kill_code, proc.kill_reason = EXIT_QUOTA, wall_time_reason(self.caps[proc.pid].quota.max_wall_time)
            self._exit(proc, proc.kill_code, proc.kill_reason)

    def _exit(self, proc: Process, code: int, reason: str, result: Any = None) -> None:
        if not proc.alive:
            return
        proc.exit_code, proc.exit_reason, proc.result = code, reason, _jsonable(result)
        proc.state, proc.wchan = ProcState.ZOMBIE, ""
        proc.ended = time.time()
        if isinstance(self.engine, Engine):
            self.engine.retire(proc)  # its KV cache joins the prefix cache
        proc.kv = None
        self._release_memory(proc)
        for child in self.procs.children(proc.pid):
            child.ppid = KERNEL_PID  # orphans are adopted by the kernel
            if not child.alive:
                self.procs.remove(child.pid)
        self.mailboxes.close(proc.pid)
        proc.exited.set()
        self._exits.set()
        self._exits = trio.Event()
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
        self._exit(proc, 0, "exited")

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
            self._exit(proc, proc.kill_code, proc.kill_reason)
        else:
            proc.cancel_scope.cancel()

    def enforce_quota(self, proc: Process, pages: int | None = None) -> bool:
        """Kill `proc` if it is over its quota; True if it may go on. Called by dispatch on every
        syscall, by llm.chat on every token, and by the memory manager with the number of
        context pages the process would hold (`pages`)."""
        reason = self.caps[proc.pid].quota.exceeded(proc, pages)
        if reason is not None:
            self.kill(proc, reason=reason, code=EXIT_QUOTA)
        return reason is None

    async def start_service(self, async_fn: Callable[..., Any], *args: Any, name: str) -> Any:
        """Run a kernel service task (an MCP server connection) in the kernel's nursery: it
        outlives the syscall that started it and ends with the kernel. `async_fn` must accept
        `task_status` and must not raise (an exception here would stop the kernel)."""
        assert self._nursery is not None, "kernel is not booted"
        return await self._nursery.start(async_fn, *args, name=name)

    def stop(self, proc: Process) -> None:
        """SIGSTOP: the process makes no progress (no syscall returns, no tokens) until `cont`.
        Its KV cache and batch bookkeeping are kept, so it resumes without prefilling."""
        if not proc.alive or proc.stopped:
            return
        proc.stopped = True
        proc.continued = trio.Event()
        proc.state_before_stop = proc.state
        proc.state = ProcState.STOPPED
        self.events.publish(Event(proc.pid, "signal", "stopped"))

    def cont(self, proc: Process) -> None:
        if not proc.alive or not proc.stopped:
            return
        proc.stopped = False
        proc.state = proc.state_before_stop
        proc.continued.set()
        self.engine.wake()
        self.events.publish(Event(proc.pid, "signal", "continued"))
        if proc.exec_pending:
            self._exec(proc)

    def _exec(self, proc: Process) -> None:
        """Start a restored process's program again from its spec: a coroutine cannot be
        checkpointed mid-flight, so what survives a restart is its record, log and memory."""
        proc.exec_pending = False
        try:
            entry = program.load(proc.program)
        except program.ProgramError as exc:
            self._exit(proc, EXIT_ERROR, f"cannot restart: {exc}")
            return
        limit = self.caps[proc.pid].quota.max_wall_time
        if limit is not None:  # wall time counts from the original spawn: it is the same process
            proc.cancel_scope.deadline = trio.current_time() + limit - (time.time() - proc.created)
        assert self._nursery is not None, "kernel is not booted"
        self._nursery.start_soon(self._run, proc, entry, name=f"pid {proc.pid}")

    async def wait(self, parent: Process, pid: int | None) -> Process | None:
        """Wait for a child (a given one, or any) to exit and reap it. None if there is no such child."""
        while True:
            children = [c for c in self.procs.children(parent.pid) if pid is None or c.pid == pid]
            if not children:
                return None
            for child in children:
                if not child.alive:
                    self.procs.remove(child.pid)
                    return child
            await self._exits.wait()


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
