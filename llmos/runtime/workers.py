"""Running each program in its own OS process: the default runner.

`WorkerRunner.run(proc)` has the template fork a worker for the process (kernel/proc/workers.py
on this side, llmos.agents.worker on the other), then serves its channel until the program
ends: every frame the worker sends is a syscall made by `proc` — the channel is its identity,
the kernel made it for this process and nothing the worker writes can name another — through
`dispatch`, the door every call uses; the same frames as the socket daemon's, without the
hello. Whatever way it ends, the worker is SIGKILLed and reaped before the process's exit is
recorded: a returned result, `proc.exit`, a traceback, or the signal that killed it.
"""

from __future__ import annotations

import shutil
import signal as signals
from typing import Any

import trio

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.proc import EXIT_ERROR, ProcessExit
from llmos.abi.program import ProgramError, locate
from llmos.abi.wire import (
    MAX_FRAME,
    CallFrame,
    CancelFrame,
    ExitFrame,
    FrameError,
    LineReader,
    Oversized,
    encode,
    error_frame,
    parse_worker_frame,
)
from llmos.config import data_dir
from llmos.kernel.kernel import Kernel
from llmos.kernel.proc.process import Process
from llmos.kernel.proc.runner import Exit, Signal
from llmos.kernel.proc.workers import (
    Launched,
    Template,
    Worker,
    WorkerLimits,
    WorkerStartError,
    describe_status,
    launch,
    make_tmp,
    worker_spec,
)
from llmos.syscalls.table import dispatch

MAX_INFLIGHT = 64  # calls in flight per worker
REAP_TIMEOUT = 10.0
SIGNALS = {"kill": signals.SIGKILL, "stop": signals.SIGSTOP, "cont": signals.SIGCONT}


class WorkerRunner:
    isolation = "workers"

    def __init__(self) -> None:
        self.kernel: Kernel | None = None
        self.template: Template | None = None
        self.workers: dict[int, Worker] = {}  # llmos pid -> its worker, while it runs
        self._launched: Launched | None = None

    def prestart(self) -> None:
        """Start the template process now, before the kernel's loop runs (while the model loads)."""
        if self._launched is None and self.template is None:
            self._launched = launch()

    def describe(self) -> str:
        from llmos.agents.sandbox import support  # (ctypes probes only: nothing the kernel lacks)

        return f"workers: each agent in its own OS process ({support().describe()}, rlimits, no capabilities)"

    async def serve(self, kernel: Kernel, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.kernel = kernel
        launched, self._launched = self._launched, None
        async with Template.open(launched) as template:
            self.template = template
            task_status.started()
            await trio.sleep_forever()

    async def warm(self) -> None:
        """Start the template now rather than at the first spawn (the daemon does)."""
        assert self.template is not None
        await self.template.start()

    async def run(self, proc: Process) -> Exit:
        kernel, template = self.kernel, self.template
        assert kernel is not None and template is not None, "kernel is not booted"
        caps = kernel.caps[proc.pid]
        try:
            location = proc.location or locate(proc.program)  # (found at spawn)
        except ProgramError as exc:
            return Exit(EXIT_ERROR, f"cannot load the program: {exc}")
        if not caps.fs_root.is_dir():
            return Exit(EXIT_ERROR, f"cannot start: its fs root {caps.fs_root} is not a folder")
        quota, config = caps.quota, kernel.config
        limits = WorkerLimits(
            address_space_mb=min(x for x in (quota.max_memory_mb, config.worker_memory_mb) if x is not None),
            cpu_seconds=quota.max_cpu_time,
            open_files=config.worker_open_files,
        )
        tmp = make_tmp(proc.pid)
        try:
            spec = worker_spec(
                proc.pid, proc.name, proc.program, proc.args, caps.fs_root, location, limits, tmp, data_dir(),
                proc.nice, kernel.user_umask,
            )  # fmt: skip
            try:
                worker = await template.spawn(spec)
            except WorkerStartError as exc:
                return Exit(EXIT_ERROR, f"cannot start a worker: {exc}")
            return await self._serve(kernel, proc, worker)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, tmp, True)

    async def _serve(self, kernel: Kernel, proc: Process, worker: Worker) -> Exit:
        self.workers[proc.pid] = worker
        proc.os_pid = worker.pid
        if proc.stopped:  # stopped while its worker was being forked
            worker.signal(signals.SIGSTOP)
        assert worker.channel is not None
        ended: Exit | None = None
        try:
            ended = await Channel(kernel, proc, worker.channel).serve()
        finally:
            with trio.CancelScope(shield=True):
                worker.signal(signals.SIGKILL)  # done, killed, or over its deadline: no worker outlives its process
                status = await worker.reap(REAP_TIMEOUT)
                worker.close()
                await worker.channel.aclose()
                self.workers.pop(proc.pid, None)
                proc.os_pid = None
        return ended if ended is not None else Exit(*describe_status(status))

    def signal(self, proc: Process, signal: Signal) -> None:
        worker = self.workers.get(proc.pid)
        if worker is not None:
            worker.signal(SIGNALS[signal])


class ChannelGone(Exception):
    """The worker closed its end or died. Caught where it is raised (not through a nursery)."""


class Channel:
    """One worker's channel: its frames are syscalls made by `proc`, and nobody else."""

    def __init__(self, kernel: Kernel, proc: Process, stream: trio.SocketStream) -> None:
        self.kernel = kernel
        self.proc = proc
        self.stream = stream
        self.reader = LineReader(stream, MAX_FRAME)
        self.send_lock = trio.Lock()
        self.calls: dict[int, trio.CancelScope] = {}
        self.ended: Exit | None = None
        self.nursery: trio.Nursery

    async def serve(self) -> Exit | None:
        """Serve calls until the program ends (its exit frame, or proc.exit) or the worker goes
        away (None: its exit status says how)."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await self._read_frames(nursery)
            nursery.cancel_scope.cancel()
        return self.ended

    async def _read_frames(self, nursery: trio.Nursery) -> None:
        while self.ended is None:
            try:
                line = await self.reader.next()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if line is None:
                return
            if isinstance(line, Oversized):
                await self.refuse(None, SyscallError(Errno.E2BIG, f"frame of {line.size} bytes is over the {MAX_FRAME}-byte limit"))
                continue
            try:
                frame = parse_worker_frame(line)
            except FrameError as err:
                await self.refuse(err.frame_id, err)
                continue
            await trio.lowlevel.checkpoint()  # a worker flooding its channel takes its turn, not the loop
            if isinstance(frame, ExitFrame):
                self.ended = Exit(frame.code, frame.reason, frame.result)
                return
            if isinstance(frame, CancelFrame):
                scope = self.calls.get(frame.id)
                if scope is not None:
                    scope.cancel()
            elif frame.id in self.calls:
                await self.refuse(frame.id, SyscallError(Errno.EINVAL, f"call id {frame.id} is already in progress"))
            elif len(self.calls) >= MAX_INFLIGHT:
                await self.refuse(frame.id, SyscallError(Errno.EAGAIN, f"{MAX_INFLIGHT} calls already in flight (the limit)"))
            else:
                self.calls[frame.id] = trio.CancelScope()
                nursery.start_soon(self._call, frame)

    async def _call(self, frame: CallFrame) -> None:
        async def emit(chunk: Any) -> None:
            await self.send({"id": frame.id, "chunk": chunk.model_dump(mode="json")})

        try:
            with self.calls[frame.id]:
                try:
                    result = await dispatch(self.kernel, self.proc.pid, frame.name, frame.args, emit)
                    reply = {"id": frame.id, "result": result.model_dump(mode="json")}
                except SyscallError as err:
                    reply = error_frame(frame.id, err)
                except ProcessExit as exc:  # proc.exit does not return: the process ends here
                    self.ended = Exit(exc.code, "exited", exc.result)
                    self.nursery.cancel_scope.cancel()
                    return
                await self.send(reply)
        except ChannelGone:
            self.nursery.cancel_scope.cancel()
        finally:
            self.calls.pop(frame.id, None)

    async def refuse(self, frame_id: int | None, err: SyscallError) -> None:
        try:
            await self.send(error_frame(frame_id, err))
        except ChannelGone:
            pass

    async def send(self, frame: dict[str, Any]) -> None:
        data = encode(frame)
        async with self.send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ChannelGone(str(exc)) from None
