"""Scheduling on the tiny model: preemption at the quantum, resume from retained KV with the
same tokens, and the policies' admission order."""

from __future__ import annotations

import trio

from conftest import kernel_with
from llmos.runtime import session

PROMPTS = [f"process number {i} says" for i in range(4)]


async def answers(kernel, prompts, max_tokens=40, nice=None):
    out = {}

    async def one(i, p):
        sh = session(kernel, f"p{i}")
        if nice is not None:
            await sh.proc.nice(nice[i])
        out[p] = (await sh.llm.chat(p, max_tokens=max_tokens)).content

    async with trio.open_nursery() as n:
        for i, p in enumerate(prompts):
            n.start_soon(one, i, p)
    return out


def test_preempted_and_resumed_equals_uninterrupted(tiny_backend):
    async def main():
        async with kernel_with(tiny_backend, max_batch=2, quantum=4) as kernel:
            contended = await answers(kernel, PROMPTS)
            preemptions = kernel.scheduler.preemptions
            prefilled = kernel.engine.stats.tokens_prefilled
        async with kernel_with(tiny_backend, max_batch=32) as kernel:
            free = await answers(kernel, PROMPTS)
        return contended, free, preemptions, prefilled

    contended, free, preemptions, prefilled = trio.run(main)
    assert preemptions > 0
    assert contended == free
    # Resuming never re-prefills: only the prompts themselves were ever prefilled.
    prompt_lens = [len(tiny_backend.encode_chat([{"role": "user", "content": p}])) for p in PROMPTS]
    assert prefilled <= sum(prompt_lens)


def test_batch_holds_at_most_max_batch(tiny_backend):
    async def main():
        async with kernel_with(tiny_backend, max_batch=3, quantum=2) as kernel:
            await answers(kernel, [f"q{i}" for i in range(7)], max_tokens=10)
            return kernel.engine.stats.batch_sizes

    sizes = trio.run(main)
    assert max(sizes) == 3


def test_priority_policy_serves_lower_nice_first(tiny_backend):
    async def main():
        async with kernel_with(tiny_backend, policy="priority", max_batch=1, quantum=4) as kernel:
            finished = []

            async def one(name, nice, tokens):
                sh = session(kernel, name)
                await sh.proc.nice(nice)
                await sh.llm.chat(name, max_tokens=tokens)
                finished.append(name)

            async with trio.open_nursery() as n:
                n.start_soon(one, "background", 10, 400)
                while kernel.engine.stats.tokens_generated < 2:
                    await trio.sleep(0.001)
                n.start_soon(one, "urgent", -5, 24)
            return finished

    assert trio.run(main) == ["urgent", "background"]


def test_stop_and_cont_keep_kv_and_output(tiny_backend):
    async def main():
        async with kernel_with(tiny_backend) as kernel:
            sh = session(kernel, "ctl")
            reference = (await sh.llm.chat("stop me", max_tokens=60)).content
            worker = session(kernel, "worker")
            result = {}

            async def work():
                result["text"] = (await worker.llm.chat("stop me", max_tokens=60)).content

            proc = kernel.procs.get(worker.pid)
            async with trio.open_nursery() as n:
                n.start_soon(work)
                while proc.generated_tokens < 10:
                    await trio.sleep(0.005)
                await sh.call("proc.signal", pid=worker.pid, signal="stop")
                await trio.sleep(0.05)
                frozen = proc.generated_tokens
                state = proc.state
                await trio.sleep(0.2)
                assert proc.generated_tokens == frozen and proc.kv is not None
                await sh.call("proc.signal", pid=worker.pid, signal="cont")
            return reference, result["text"], state

    reference, text, state = trio.run(main)
    assert state.value == "STOPPED"
    assert text == reference
