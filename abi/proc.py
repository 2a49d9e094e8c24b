"""Processes as an agent sees them: states, exit codes, and the proc.* syscalls (spawn, wait,
kill, signal, exit, getpid, ps, nice, limits) and sleep."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from llmos.abi.catalogue import Empty, Ok, declare

KERNEL_PID = 0  # the kernel itself: parent of what the shell starts, adopter of orphans
NICE_MIN, NICE_MAX = -20, 19
EXIT_ERROR = 1  # the program raised
EXIT_KILLED = 137  # 128 + SIGKILL, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_QUOTA = 152  # 128 + SIGXCPU: over a quota


class ProcState(str, Enum):
    """As `ps` shows them.
    READY     wants the model and waits for a place in the running batch (new or preempted)
    RUNNING   in the running batch, or executing its own program code
    BLOCKED   inside a syscall that waits on something else (wait, recv, a tool)
    SLEEPING  in `sleep`
    STOPPED   stopped by a signal, until continued
    ZOMBIE    exited; its status waits for the parent's `proc.wait`
    """

    READY = "READY"
    RUNNING = "RUNNING"
    BLOCKED = "BLOCKED"
    SLEEPING = "SLEEPING"
    STOPPED = "STOPPED"
    ZOMBIE = "ZOMBIE"


class ProcessExit(BaseException):
    """Raised inside a program by `proc.exit`: it does not return. A BaseException so that an
    agent's `except Exception` cannot swallow it."""

    def __init__(self, code: int, result: Any = None) -> None:
        super().__init__(code)
        self.code = code
        self.result = result


# -- spawn --------------------------------------------------------------------------------


class QuotaSpec(BaseModel):
    """Resource limits for a child; each is capped by what the caller has left."""

    model_config = {"extra": "forbid"}
    max_tokens: int | None = Field(default=None, ge=0)
    max_wall_time: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_syscalls: int | None = Field(default=None, ge=0)
    max_memory_pages: int | None = Field(default=None, ge=0)
    max_memory_mb: int | None = Field(default=None, ge=16, description="the worker's address space (RLIMIT_AS)")
    max_cpu_time: int | None = Field(default=None, ge=1, description="CPU seconds of the worker (RLIMIT_CPU)")


class SpawnRequest(BaseModel):
    model_config = {"extra": "forbid"}
    program: str = Field(min_length=1, max_length=4096, description="file path, module[:function] or example name")
    args: list[str] = Field(default_factory=list, max_length=256)
    name: str | None = Field(default=None, max_length=64)
    nice: int | None = Field(default=None, ge=NICE_MIN, le=NICE_MAX)
    allow: list[str] | None = Field(
        default=None, max_length=256, description="syscall patterns the child may use (within the caller's)"
    )
    root: str | None = Field(default=None, max_length=4096, description="the child's fs root, inside the caller's")
    quota: QuotaSpec | None = Field(default=None, description="the child's resource limits (within the caller's)")


class SpawnResponse(BaseModel):
    pid: int


# -- wait, kill, signal, exit ---------------------------------------------------------------


class WaitRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int | None = Field(default=None, description="a child's pid; any child if omitted")
    timeout: float | None = Field(default=None, gt=0, le=86400)


class WaitResponse(BaseModel):
    pid: int
    name: str
    exit_code: int
    reason: str
    result: Any = None


class PidRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int


class SignalRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int
    signal: Literal["stop", "cont", "term", "kill"]


class ExitRequest(BaseModel):
    model_config = {"extra": "forbid"}
    code: int = Field(default=0, ge=0, le=255)
    result: Any = None


# -- getpid, nice, ps ------------------------------------------------------------------------


class PidResponse(BaseModel):
    pid: int
    ppid: int
    name: str


class NiceRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int | None = None
    nice: int = Field(ge=NICE_MIN, le=NICE_MAX)


class NiceResponse(BaseModel):
    pid: int
    nice: int


class ProcInfo(BaseModel):
    pid: int
    ppid: int
    name: str
    program: str
    state: ProcState
    wchan: str
    nice: int
    prompt_tokens: int
    generated_tokens: int
    llm_time: float
    syscalls: int
    kv_bytes: int
    age: float
    exit_code: int | None
    exit_reason: str
    os_pid: int | None = None  # the pid of its worker process, while it has one


class PsResponse(BaseModel):
    procs: list[ProcInfo]


# -- limits, sleep -----------------------------------------------------------------------


class Used(BaseModel):
    tokens: int
    wall_time: float
    syscalls: int


class Limits(BaseModel):
    quota: QuotaSpec  # None: unlimited
    used: Used
    left: QuotaSpec


class SleepRequest(BaseModel):
    model_config = {"extra": "forbid"}
    seconds: float = Field(ge=0, le=86400)


declare("proc.spawn", SpawnRequest, SpawnResponse, doc="Start an agent program as a child process.")
declare("proc.wait", WaitRequest, WaitResponse, doc="Wait for a child to exit; reap it and return its status and result.")
declare("proc.kill", PidRequest, Ok, doc="Kill a process (the caller itself or one of its descendants).")
declare(
    "proc.signal", SignalRequest, Ok,
    doc="Send a signal: stop (no progress until cont; KV kept), cont, term (exit 143), kill (exit 137).",
)  # fmt: skip
declare("proc.exit", ExitRequest, Ok, doc="End the calling process with an exit code and an optional result for its parent.")
declare("proc.getpid", Empty, PidResponse, doc="The caller's pid, its parent's, and its name.")
declare("proc.nice", NiceRequest, NiceResponse, doc="Set the nice value (scheduling weight) of the caller or a descendant.")
declare("proc.ps", Empty, PsResponse, doc="Every process in the table.")
declare(
    "proc.limits", Empty, Limits,
    doc="The caller's quota (max tokens, wall time, syscalls, memory pages, worker memory and CPU), its use so far and what is left.",
)  # fmt: skip
declare("sleep", SleepRequest, Ok, doc="Sleep; the process gives up nothing but time (its KV cache is kept).")
