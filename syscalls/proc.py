"""Process syscalls: spawn, wait, kill, exit, getpid, ps, nice, sleep."""

from __future__ import annotations

import time

import trio

from llmos.abi import Empty, Ok
from llmos.abi.errors import Errno, SyscallError
from llmos.abi.proc import (
    KERNEL_PID,
    ExitRequest,
    NiceRequest,
    NiceResponse,
    PidRequest,
    PidResponse,
    ProcessExit,
    ProcInfo,
    PsResponse,
    SignalRequest,
    SleepRequest,
    SpawnRequest,
    SpawnResponse,
    WaitRequest,
    WaitResponse,
)
from llmos.kernel.kernel import TableFull
from llmos.kernel.proc import program
from llmos.kernel.proc.process import Process
from llmos.kernel.proc.quota import Quota
from llmos.syscalls.table import Call, syscall

# -- spawn --------------------------------------------------------------------------------


@syscall("proc.spawn")
async def spawn(call: Call, req: SpawnRequest) -> SpawnResponse:
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


@syscall("proc.wait")
async def wait(call: Call, req: WaitRequest) -> WaitResponse:
    proc, kernel = call.proc, call.kernel
    if req.pid is not None:
        target = kernel.procs.get(req.pid)
        if target is None:
            raise SyscallError(Errno.ESRCH, f"no such process: {req.pid}")
        if target.ppid != proc.pid:
            raise SyscallError(Errno.ECHILD, f"process {req.pid} is not a child of {proc.pid}")
    child = None
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


@syscall("proc.kill")
async def kill(call: Call, req: PidRequest) -> Ok:
    target = target_process(call, req.pid)
    call.kernel.kill(target)
    if target is call.proc:
        await trio.lowlevel.checkpoint()  # lets the cancellation land now
    return Ok()


@syscall("proc.signal")
async def signal(call: Call, req: SignalRequest) -> Ok:
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


@syscall("proc.exit")
async def exit_(call: Call, req: ExitRequest) -> Ok:
    if call.proc.session:
        call.kernel.end_session(call.proc)
        return Ok()
    raise ProcessExit(req.code, req.result)


@syscall("proc.getpid")
async def getpid(call: Call, req: Empty) -> PidResponse:
    return PidResponse(pid=call.proc.pid, ppid=call.proc.ppid, name=call.proc.name)


@syscall("proc.nice")
async def nice(call: Call, req: NiceRequest) -> NiceResponse:
    target = target_process(call, call.proc.pid if req.pid is None else req.pid)
    _check_nice(call.proc, req.nice)
    target.nice = req.nice
    return NiceResponse(pid=target.pid, nice=target.nice)


# -- ps -----------------------------------------------------------------------------------


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


@syscall("proc.ps")
async def ps(call: Call, req: Empty) -> PsResponse:
    return PsResponse(procs=[proc_info(p) for p in call.kernel.procs])


# -- sleep --------------------------------------------------------------------------------


@syscall("sleep")
async def sleep(call: Call, req: SleepRequest) -> Ok:
    await call.kernel.sleep(call.proc, req.seconds)
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
