"""ipc.send / ipc.recv: mailboxes between processes; recv blocks the process without polling."""

from __future__ import annotations

import trio
from conftest import errno_of, prog, run

from llmos.abi.errors import Errno
from llmos.kernel.proc.process import ProcState
from llmos.runtime import local_handle


class StepCounter(trio.abc.Instrument):
    """Counts how often each task is scheduled: a task that polls would keep running."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


def test_send_and_recv_between_processes(tiny_backend):
    async def body(kernel, sh):
        receiver = await sh.proc.spawn(prog("receiver"), "2")
        await sh.ipc.send(receiver, {"n": 1})
        await sh.ipc.send(receiver, ["two", 2], tag="second")
        status = await sh.proc.wait(receiver)
        sender = await sh.proc.spawn(prog("sender"), "alpha", "beta")
        first = await sh.ipc.recv(tag="arg")
        second = await sh.ipc.recv(from_pid=sender)
        await sh.proc.wait(sender)
        return sh.pid, status, sender, first, second

    me, status, sender, first, second = run(tiny_backend, body)
    assert status.exit_code == 0
    assert status.result == [{"from": me, "tag": None, "body": {"n": 1}}, {"from": me, "tag": "second", "body": ["two", 2]}]
    assert (first.sender, first.tag, first.body) == (sender, "arg", "alpha")
    assert (second.body, second.pending) == ("beta", 0)


def test_recv_blocks_the_process_without_polling(tiny_backend):
    counter = StepCounter()

    async def body(kernel, sh):
        trio.lowlevel.add_instrument(counter)
        try:
            pid = await sh.proc.spawn(prog("receiver"), "1")
            proc = kernel.procs.get(pid)
            while proc.wchan != "ipc.recv":
                await trio.sleep(0.01)
            state = (proc.state, proc.wchan)
            steps_before, engine_steps = counter.steps.get(f"pid {pid}", 0), kernel.engine.stats.steps
            await trio.sleep(0.5)
            idle = (counter.steps.get(f"pid {pid}", 0) - steps_before, kernel.engine.stats.steps - engine_steps)
            await sh.ipc.send(pid, "wake up")
            status = await sh.proc.wait(pid)
        finally:
            trio.lowlevel.remove_instrument(counter)
        return state, idle, status

    state, idle, status = run(tiny_backend, body)
    assert state == (ProcState.BLOCKED, "ipc.recv")
    assert idle == (0, 0)  # while blocked, its task never ran and the engine did nothing
    assert status.result == [{"from": 1, "tag": None, "body": "wake up"}]


def test_recv_timeouts_and_filters(tiny_backend):
    async def body(kernel, sh):
        other = local_handle(kernel, kernel.session("other"))
        out = {
            "nonblocking": await errno_of(sh.ipc.recv(timeout=0)),
            "timeout": await errno_of(sh.ipc.recv(timeout=0.1)),
        }
        await other.ipc.send(sh.pid, "untagged")
        out["wrong_tag"] = await errno_of(sh.ipc.recv(tag="x", timeout=0))
        out["wrong_sender"] = await errno_of(sh.ipc.recv(from_pid=999, timeout=5))  # no such process: at once
        out["right"] = (await sh.ipc.recv(from_pid=other.pid, timeout=0)).body
        return out

    out = run(tiny_backend, body)
    assert out["nonblocking"] is Errno.EAGAIN
    assert out["timeout"] is Errno.ETIMEDOUT
    assert out["wrong_tag"] is Errno.EAGAIN
    assert out["wrong_sender"] is Errno.ESRCH
    assert out["right"] == "untagged"


def test_recv_from_a_sender_that_exits_wakes_with_esrch(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(prog("sleeper"), "0.2")
        return await errno_of(sh.ipc.recv(from_pid=pid))

    assert run(tiny_backend, body) is Errno.ESRCH


def test_send_errors(tiny_backend):
    async def body(kernel, sh):
        kernel.mailboxes.capacity = 3
        other = local_handle(kernel, kernel.session("other"))
        for i in range(3):
            await sh.ipc.send(other.pid, i)
        return {
            "full": await errno_of(sh.ipc.send(other.pid, 3)),
            "no_such": await errno_of(sh.ipc.send(4242, "hi")),
            "kernel": await errno_of(sh.ipc.send(0, "hi")),
            "too_big": await errno_of(sh.ipc.send(other.pid, "x" * 70_000)),
            "not_json": await errno_of(sh.ipc.send(other.pid, float("nan"))),
            "kept": [(await other.ipc.recv(timeout=0)).body for _ in range(3)],
            "bytes_full": await _fill_by_bytes(kernel, sh, other.pid),
        }

    out = run(tiny_backend, body)
    assert out["full"] is Errno.EAGAIN
    assert out["no_such"] is out["kernel"] is Errno.ESRCH
    assert out["too_big"] is Errno.E2BIG
    assert out["not_json"] is Errno.EINVAL
    assert out["kept"] == [0, 1, 2]
    assert out["bytes_full"] is Errno.EAGAIN


async def _fill_by_bytes(kernel, sh, pid):
    kernel.mailboxes.capacity, kernel.mailboxes.max_bytes = 1000, 100_000
    for _ in range(3):
        await sh.ipc.send(pid, "x" * 30_000)
    return await errno_of(sh.ipc.send(pid, "x" * 30_000))


def test_kill_and_stop_while_blocked_in_recv(tiny_backend):
    async def body(kernel, sh):
        victim = await sh.proc.spawn(prog("receiver"), "1")
        paused = await sh.proc.spawn(prog("receiver"), "1")
        procs = kernel.procs.get(victim), kernel.procs.get(paused)
        while any(p.wchan != "ipc.recv" for p in procs):
            await trio.sleep(0.01)
        await sh.proc.kill(victim)
        killed = await sh.proc.wait(victim)
        await sh.proc.signal(paused, "stop")
        await sh.ipc.send(paused, "while stopped")
        await trio.sleep(0.2)
        stopped_state = procs[1].state, procs[1].alive
        await sh.proc.signal(paused, "cont")
        resumed = await sh.proc.wait(paused)
        return killed, stopped_state, resumed, victim in kernel.mailboxes.boxes

    killed, stopped_state, resumed, mailbox_left = run(tiny_backend, body)
    assert killed.exit_code == 137 and not mailbox_left
    assert stopped_state == (ProcState.STOPPED, True)  # got the message but does not run until cont
    assert resumed.exit_code == 0 and resumed.result[0]["body"] == "while stopped"


def test_a_recv_cancelled_while_stopped_keeps_its_message(tiny_backend):
    """The message a stopped receiver took is not lost if its call is cancelled before the
    process is continued: it goes back to the front of the mailbox."""

    async def body(kernel, sh):
        from llmos.runtime import session

        rx = session(kernel, "rx")
        proc = kernel.procs.get(rx.pid)
        scope = trio.CancelScope()

        async def receive() -> None:
            with scope:
                await rx.ipc.recv()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            while proc.wchan != "ipc.recv":
                await trio.sleep(0.01)
            await sh.proc.signal(rx.pid, "stop")
            await sh.ipc.send(rx.pid, "keep me")
            await sh.ipc.send(rx.pid, "and me")
            await trio.sleep(0.1)
            scope.cancel()
        await sh.proc.signal(rx.pid, "cont")
        return [(await rx.ipc.recv(timeout=0)).body for _ in range(2)]

    assert run(tiny_backend, body) == ["keep me", "and me"]
