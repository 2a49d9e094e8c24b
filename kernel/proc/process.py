"""The process: one running agent program, and the table of all of them (xv6's proc.c).

States, as the shell shows them (llmos.abi.proc.ProcState):
  READY     wants the model and waits for a place in the running batch (new or preempted)
  RUNNING   in the running batch, or executing its own program code
  BLOCKED   inside a syscall that waits on something else (wait, recv, a tool)
  SLEEPING  in `sleep`
  STOPPED   stopped by a signal, until continued
  ZOMBIE    exited; its status waits for the parent's `proc.wait`

This module owns the state, as xv6's proc.c owns p->state: what a process is doing (its
activity: READY, RUNNING, BLOCKED, SLEEPING or ZOMBIE, and the wait channel) and whether it is
stopped are changed only by the transitions below, which only the kernel calls (kernel.py, and
the engine for the batch it runs). STOPPED is not an activity but a hold on top of one: a
process stopped while it sleeps is STOPPED, its sleep still runs out underneath, and `cont`
shows what it is doing by then; no copy of "the state before the stop" can go stale.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import trio

from llmos.abi.proc import ProcState
from llmos.kernel.model.kvcache import SequenceKV

LOG_LINES = 1000  # per process; older lines are dropped
REAPED_KEPT = 256  # reaped processes whose record (and log) stays readable


@dataclass
class Process:
    pid: int
    ppid: int
    name: str
    program: str
    args: list[str]
    nice: int = 0
    priority: int = 0
    created: float = field(default_factory=time.time)
    ended: float | None = None
    exit_code: int | None = None
    exit_reason: str = ""  # "exited", "killed", or the traceback of an uncaught exception
    result: Any = None  # the program's return value, handed to the parent by proc.wait
    killed: bool = False
    kill_reason: str = "killed"
    kill_code: int = 137  # the exit code a kill gives: 137 killed, 143 terminated, 152 over quota
    session: bool = False  # stands for an external client (shell, daemon client): no task of its own
    exec_pending: bool = False  # restored after a restart, no task yet: `cont` starts its program anew
    continued: trio.Event = field(default_factory=trio.Event)  # set when a stop ends
    # accounting
    prompt_tokens: int = 0
    generated_tokens: int = 0
    llm_time: float = 0.0  # seconds spent in the running batch
    syscalls: int = 0
    vruntime: float = 0.0  # weighted tokens, for fair share
    # kernel resources
    kv: SequenceKV | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    log_count: int = 0  # lines ever written; the journal persists those it has not seen
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    exited: trio.Event = field(default_factory=trio.Event)
    # the state: read through the properties below, changed only by the transitions
    _activity: ProcState = field(default=ProcState.READY, repr=False)
    _wchan: str = field(default="", repr=False)  # what it waits on, e.g. "llm", "proc.wait"
    _stopped: bool = field(default=False, repr=False)  # by a stop signal: no progress until continued

    @property
    def state(self) -> ProcState:
        if self._stopped and self._activity is not ProcState.ZOMBIE:
            return ProcState.STOPPED
        return self._activity

    @property
    def activity(self) -> ProcState:
        """What it is doing, stopped or not (never STOPPED)."""
        return self._activity

    @property
    def wchan(self) -> str:
        return self._wchan

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def alive(self) -> bool:
        return self._activity is not ProcState.ZOMBIE

    # -- transitions: only the kernel calls these ------------------------------------------

    def set_running(self, wchan: str = "") -> None:
        """Executing its own code, or (wchan "llm") in the model's running batch."""
        self._set(ProcState.RUNNING, wchan)

    def set_waiting(self, activity: ProcState, wchan: str) -> None:
        """READY for the model, BLOCKED in a syscall, or SLEEPING, on `wchan`."""
        if activity not in (ProcState.READY, ProcState.BLOCKED, ProcState.SLEEPING):
            raise ValueError(f"{activity.value} is not a way of waiting")
        self._set(activity, wchan)

    def set_stopped(self) -> bool:
        """Hold it: no syscall returns and no token is generated until `set_continued`."""
        if not self.alive or self._stopped:
            return False
        self._stopped = True
        self.continued = trio.Event()
        return True

    def set_continued(self) -> bool:
        if not self.alive or not self._stopped:
            return False
        self._stopped = False
        self.continued.set()
        return True

    def set_zombie(self) -> None:
        self._activity, self._wchan = ProcState.ZOMBIE, ""
        if self._stopped:  # nothing is held any more; anyone waiting for a cont may go
            self._stopped = False
            self.continued.set()

    def _set(self, activity: ProcState, wchan: str) -> None:
        if not self.alive:
            return  # a zombie does nothing any more (a late finally block is no resurrection)
        self._activity, self._wchan = activity, wchan

    def write_log(self, level: str, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        for line in message.splitlines() or [""]:
            self.log.append(f"{stamp} {level:<7} {line}")
            self.log_count += 1


class ProcessTable:
    """pid -> Process. Pid 0 is the kernel itself (the parent of processes the shell starts)."""

    def __init__(self, max_processes: int) -> None:
        self.max_processes = max_processes
        self.procs: dict[int, Process] = {}
        self.reaped: OrderedDict[int, Process] = OrderedDict()  # recently reaped, for their logs
        self._next_pid = 1

    def allocate_pid(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    @property
    def next_pid(self) -> int:
        return self._next_pid

    def reserve(self, next_pid: int) -> None:
        """Hand out no pid below `next_pid`: pids, and what is filed under them, survive restarts."""
        self._next_pid = max(self._next_pid, next_pid)

    def add(self, proc: Process) -> None:
        self.procs[proc.pid] = proc

    def get(self, pid: int) -> Process | None:
        return self.procs.get(pid)

    def remove(self, pid: int) -> None:
        proc = self.procs.pop(pid, None)
        if proc is not None:
            self.reaped[pid] = proc
            while len(self.reaped) > REAPED_KEPT:
                self.reaped.popitem(last=False)

    def lookup(self, pid: int) -> Process | None:
        """A process in the table, or one recently reaped."""
        return self.procs.get(pid) or self.reaped.get(pid)

    def children(self, ppid: int) -> list[Process]:
        return [p for p in self.procs.values() if p.ppid == ppid]

    def live_count(self) -> int:
        return sum(1 for p in self.procs.values() if p.alive)

    def __iter__(self):
        return iter(sorted(self.procs.values(), key=lambda p: p.pid))
