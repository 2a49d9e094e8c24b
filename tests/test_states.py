"""Process states as `ps` shows them, owned by the kernel (kernel/proc/process.py): a stop
holds whatever the process was doing — a sleep, a wait for a child, a wait for a message — and
`cont` shows and resumes what it is doing by then."""

from __future__ import annotations

import trio
from conftest import prog, run

from llmos.abi.proc import ProcState
from llmos.runtime import session


async def _call_in_background(nursery: trio.Nursery, coro_fn, *args) -> dict:
    """Start a call; the dict it returns gets "result" and "returned_at" when it returns."""
    box: dict = {}

    async def call() -> None:
        box["result"] = await coro_fn(*args)
        box["returned_at"] = trio.current_time()

    nursery.start_soon(call)
    await trio.sleep(0)
    return box


def _states(kernel, pid):
    p = kernel.procs.get(pid)
    return p.state, p.wchan


def test_stop_during_sleep(tiny_backend):
    async def body(kernel, sh):
        a = session(kernel, "a")
        seen = {}
        async with trio.open_nursery() as n:
            box = await _call_in_background(n, a.sleep, 0.3)
            await trio.sleep(0.1)
            seen["sleeping"] = _states(kernel, a.pid)
            await sh.proc.signal(a.pid, "stop")
            seen["stopped"] = _states(kernel, a.pid)
            await trio.sleep(0.5)  # the sleep ran out underneath
            seen["after_sleep"] = _states(kernel, a.pid)
            seen["returned_while_stopped"] = "returned_at" in box
            await sh.proc.signal(a.pid, "cont")
            await trio.sleep(0.05)
            seen["returned_after_cont"] = "returned_at" in box
            seen["after_cont"] = _states(kernel, a.pid)
        return seen

    seen = run(tiny_backend, body)
    assert seen["sleeping"] == (ProcState.SLEEPING, "sleep")
    assert seen["stopped"][0] is ProcState.STOPPED
    assert seen["after_sleep"][0] is ProcState.STOPPED  # not RUNNING: it makes no progress
    assert not seen["returned_while_stopped"]
    assert seen["returned_after_cont"]
    assert seen["after_cont"] == (ProcState.RUNNING, "")


def test_cont_before_the_sleep_ends_returns_to_sleeping(tiny_backend):
    async def body(kernel, sh):
        a = session(kernel, "a")
        async with trio.open_nursery() as n:
            box = await _call_in_background(n, a.sleep, 0.4)
            await trio.sleep(0.1)
            await sh.proc.signal(a.pid, "stop")
            await trio.sleep(0.1)
            await sh.proc.signal(a.pid, "cont")
            state = _states(kernel, a.pid)
            started = trio.current_time()
        return state, box["returned_at"] - started

    state, waited = run(tiny_backend, body)
    assert state == (ProcState.SLEEPING, "sleep")
    assert waited > 0.1  # it slept on to the end of its sleep


def test_stop_during_proc_wait(tiny_backend):
    async def body(kernel, sh):
        a = session(kernel, "a")
        child = await a.proc.spawn(prog("sleeper"), "0.2")
        seen = {}
        async with trio.open_nursery() as n:
            box = await _call_in_background(n, a.proc.wait, child)
            await trio.sleep(0.05)
            seen["waiting"] = _states(kernel, a.pid)
            await sh.proc.signal(a.pid, "stop")
            await trio.sleep(0.5)  # the child exited meanwhile
            seen["after_child_exit"] = _states(kernel, a.pid)
            seen["returned_while_stopped"] = "returned_at" in box
            await sh.proc.signal(a.pid, "cont")
        seen["status"] = (box["result"].pid, box["result"].result)
        seen["child"] = child
        return seen

    seen = run(tiny_backend, body)
    assert seen["waiting"] == (ProcState.BLOCKED, "proc.wait")
    assert seen["after_child_exit"][0] is ProcState.STOPPED
    assert not seen["returned_while_stopped"]
    assert seen["status"] == (seen["child"], "woke")


def test_stop_during_ipc_recv(tiny_backend):
    async def body(kernel, sh):
        a = session(kernel, "a")
        seen = {}
        async with trio.open_nursery() as n:
            box = await _call_in_background(n, a.ipc.recv)
            await trio.sleep(0.05)
            seen["waiting"] = _states(kernel, a.pid)
            await sh.proc.signal(a.pid, "stop")
            await sh.ipc.send(a.pid, {"x": 1})
            await trio.sleep(0.2)
            seen["after_send"] = _states(kernel, a.pid)
            seen["returned_while_stopped"] = "returned_at" in box
            await sh.proc.signal(a.pid, "cont")
        seen["body"] = box["result"].body
        return seen

    seen = run(tiny_backend, body)
    assert seen["waiting"] == (ProcState.BLOCKED, "ipc.recv")
    assert seen["after_send"][0] is ProcState.STOPPED
    assert not seen["returned_while_stopped"]
    assert seen["body"] == {"x": 1}


def test_stop_while_waiting_for_the_model_and_cont(tiny_backend):
    """READY/RUNNING on "llm" is the engine's; a stop shows STOPPED and no token comes."""

    async def body(kernel, sh):
        a = session(kernel, "a")
        async with trio.open_nursery() as n:
            box = await _call_in_background(n, lambda: a.llm.chat("count", max_tokens=400, ignore_eos=True))
            # Stop it while it decodes, however fast the model (the tiny one: 400 tokens in ~0.1 s).
            while (kernel.procs.get(a.pid).generated_tokens or 0) < 5:
                await trio.sleep(0.001)
            await sh.proc.signal(a.pid, "stop")
            await trio.sleep(0.05)
            p = kernel.procs.get(a.pid)
            tokens = p.generated_tokens
            stopped = (p.state, p.wchan)
            await trio.sleep(0.3)
            frozen = p.generated_tokens == tokens
            await sh.proc.signal(a.pid, "cont")
            await trio.sleep(0.05)
            after = (p.state, p.wchan)
        return stopped, frozen, after, box["result"].usage.completion_tokens

    stopped, frozen, after, tokens = run(tiny_backend, body)
    assert stopped == (ProcState.STOPPED, "llm")
    assert frozen
    assert after[0] in (ProcState.READY, ProcState.RUNNING) and after[1] == "llm"
    assert tokens == 400
