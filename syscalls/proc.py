"""Process syscalls: spawn, wait, kill, exit, getpid, ps, nice, sleep."""

from __future__ import annotations

import time
from typing import Any, Literal

import trio
from pydantic import BaseModel, Field

from llmos.kernel.proc import program
from llmos.kernel.kernel import KERNEL_PID, ProcessExit, TableFull
from llmos.kernel.proc.process import Process, ProcState
from llmos.kernel.proc.quota import Quota
from llmos.kernel.model.scheduler import NICE_MAX, NICE_MIN
from llmos.syscalls.errors import Errno, SyscallError
from llmos.syscalls.table import Call, syscall


class Empty(BaseModel):
    model_config = {"extra": "forbid"}


class Ok(BaseModel):
    ok: bool = True


# -- spawn --------------------------------------------------------------------------------


class QuotaSpec(BaseModel):
    """Resource limits for a child; each is capped by what the caller has left."""

    model_config = {"extra": "forbid"}
    max_tokens: int | None = Field(default=None, ge=0)
    max_wall_time: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_syscalls: int | None = Field(default=None, ge=0)
    max_memory_pages: int | None = Field(default=None, ge=0)


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


@syscall("proc.spawn", SpawnRequest, SpawnResponse)
async def spawn(call: Call, req: SpawnRequest) -> SpawnResponse:
    """Start an agent program as a child process."""
    parent = call.proc
    nice = parent.nice if req.nice is None else req.nice
    _check_nice(parent, nice)
    try:
        quota = Quota(**req.quota.model_dump()) if req.quota is not None else None
        caps = call.kernel.caps[parent.pid].narrowed(req.allow, req.root, quota)
    except ValueError as exc:
        raise SyscallError(Errno.EPERM, str(exc)) from None
    try:
        child = call.kernel.spawn(parent, req.program, req.args, req.name, nice, caps)
    except program.ProgramError as exc:
        raise SyscallError(Errno.ENOENT if exc.missing else Errno.ENOEXEC, str(exc)) from None
    except TableFull as exc:
        raise SyscallError(Errno.EAGAIN, str(exc)) from None
    return SpawnResponse(pid=child.pid)


# -- wait ---------------------------------------------------------------------------------


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


@syscall("proc.wait", WaitRequest, WaitResponse)
async def wait(call: Call, req: WaitRequest) -> WaitResponse:
    """Wait for a child to exit; reap it and return its status and result."""
    proc, kernel = call.proc, call.kernel
    if req.pid is not None:
        target = kernel.procs.get(req.pid)
        if target is None:
            raise SyscallError(Errno.ESRCH, f"no such process: {req.pid}")
        if target.ppid != proc.pid:
            raise SyscallError(Errno.ECHILD, f"process {req.pid} is not a child of {proc.pid}")
    child = None
    with _blocked(proc, "proc.wait"):
        with trio.move_on_after(req.timeout if req.timeout is not None else float("inf")):
            child = await kernel.wait(proc, req.pid)
            if child is None:
                raise SyscallError(Errno.ECHILD, f"process {proc.pid} has no children to wait for")
    if child is None:
        raise SyscallError(Errno.ETIMEDOUT, f"no child exited within {req.timeout} s")
    return WaitResponse(
        pid=child.pid,
        name=child.name,
        exit_code=child.exit_code if child.exit_code is not None else -1,
        reason=child.exit_reason,
        result=child.result,
    )


# -- kill, exit, getpid, nice --------------------------------------------------------------


class PidRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int


@syscall("proc.kill", PidRequest, Ok)
async def kill(call: Call, req: PidRequest) -> Ok:
    """Kill a process (the caller itself or one of its descendants)."""
    target = target_process(call, req.pid)
    call.kernel.kill(target)
    if target is call.proc:
        await trio.lowlevel.checkpoint()  # lets the cancellation land now
    return Ok()


class SignalRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int
    signal: Literal["stop", "cont", "term", "kill"]


@syscall("proc.signal", SignalRequest, Ok)
async def signal(call: Call, req: SignalRequest) -> Ok:
    """Send a signal: stop (no progress until cont; KV kept), cont, term (exit 143), kill (exit 137)."""
    target = target_process(call, req.pid)
    kernel = call.kernel
    if req.signal == "stop":
        kernel.stop(target)
    elif req.signal == "cont":
        kernel.cont(target)
    else:
        kernel.kill(target, terminate=req.signal == "term")
    if target is call.proc:
        await trio.lowlevel.checkpoint()
    return Ok()


class ExitRequest(BaseModel):
    model_config = {"extra": "forbid"}
    code: int = Field(default=0, ge=0, le=255)
    result: Any = None


@syscall("proc.exit", ExitRequest, Ok)
async def exit_(call: Call, req: ExitRequest) -> Ok:
    """End the calling process with an exit code and an optional result for its parent."""
    if call.proc.session:
        call.kernel.end_session(call.proc)
        return Ok()
    raise ProcessExit(req.code, req.result)


class PidResponse(BaseModel):
    pid: int
    ppid: int
    name: str


@syscall("proc.getpid", Empty, PidResponse)
async def getpid(call: Call, req: Empty) -> PidResponse:
    """The caller's pid, its parent's, and its name."""
    return PidResponse(pid=call.proc.pid, ppid=call.proc.ppid, name=call.proc.name)


class NiceRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int | None = None
    nice: int = Field(ge=NICE_MIN, le=NICE_MAX)


class NiceResponse(BaseModel):
    pid: int
    nice: int


@syscall("proc.nice", NiceRequest, NiceResponse)
async def nice(call: Call, req: NiceRequest) -> NiceResponse:
    """Set the nice value (scheduling weight) of the caller or a descendant."""
    target = target_process(call, call.proc.pid if req.pid is None else req.pid)
    _check_nice(call.proc, req.nice)
    target.nice = req.nice
    return NiceResponse(pid=target.pid, nice=target.nice)


# -- ps -----------------------------------------------------------------------------------


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


class PsResponse(BaseModel):
    procs: list[ProcInfo]


def proc_info(p: Process) -> ProcInfo:
    end = p.ended if p.ended is not None else time.time()
    return ProcInfo(
        pid=p.pid,
        ppid=p.ppid,
        name=p.name,
        program=p.program,
        state=p.state,
        wchan=p.wchan,
        nice=p.nice,
        prompt_tokens=p.prompt_tokens,
        generated_tokens=p.generated_tokens,
        llm_time=round(p.llm_time, 3),
        syscalls=p.syscalls,
        kv_bytes=p.kv.nbytes if p.kv is not None else 0,
        age=round(end - p.created, 3),
        exit_code=p.exit_code,
        exit_reason=p.exit_reason,
    )


@syscall("proc.ps", Empty, PsResponse)
async def ps(call: Call, req: Empty) -> PsResponse:
    """Every process in the table."""
    return PsResponse(procs=[proc_info(p) for p in call.kernel.procs])


# -- sleep --------------------------------------------------------------------------------


class SleepRequest(BaseModel):
    model_config = {"extra": "forbid"}
    seconds: float = Field(ge=0, le=86400)


@syscall("sleep", SleepRequest, Ok)
async def sleep(call: Call, req: SleepRequest) -> Ok:
    """Sleep; the process gives up nothing but time (its KV cache is kept)."""
    proc = call.proc
    proc.state = ProcState.SLEEPING
    try:
        await trio.sleep(req.seconds)
    finally:
        if proc.alive:
            proc.state = ProcState.RUNNING
    return Ok()


# -- helpers ------------------------------------------------------------------------------


def target_process(call: Call, pid: int, alive: bool = True) -> Process:
    """A process the caller may act on: itself, or a descendant; sessions may act on any."""
    target = call.kernel.procs.get(pid) if alive else call.kernel.procs.lookup(pid)
    if target is None or (alive and not target.alive):
        raise SyscallError(Errno.ESRCH, f"no such process: {pid}")
    if call.proc.session or _is_descendant(call, target):
        return target
    raise SyscallError(Errno.EPERM, f"process {call.proc.pid} may not act on process {pid}")


def _is_descendant(call: Call, target: Process) -> bool:
    p: Process | None = target
    while p is not None:
        if p.pid == call.proc.pid:
            return True
        p = call.kernel.procs.get(p.ppid) if p.ppid != KERNEL_PID else None
    return False


def _check_nice(caller: Process, nice: int) -> None:
    """As in Unix, only the privileged (sessions: the shell, operators) may raise priority:
    a process cannot give itself or its children a nice value below its own."""
    if not caller.session and nice < caller.nice:
        raise SyscallError(Errno.EPERM, f"nice {nice} is below the caller's own ({caller.nice})")


class _blocked:
    """Marks a process BLOCKED on `wchan` for the duration of a wait."""

    def __init__(self, proc: Process, wchan: str) -> None:
        self.proc, self.wchan = proc, wchan

    def __enter__(self) -> None:
        self.proc.state, self.proc.wchan = ProcState.BLOCKED, self.wchan

    def __exit__(self, *exc: object) -> None:
        if self.proc.alive:
            self.proc.state, self.proc.wchan = ProcState.RUNNING, ""
