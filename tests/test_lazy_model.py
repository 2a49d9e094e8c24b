"""The model's weights load on the first LLM call, not at boot: a kernel that runs no LLM work
never loads them, and the first call says so while it waits (kernel/lazymodel.py)."""

from __future__ import annotations

import trio
from conftest import kernel_with, prog

from llmos.config import KernelConfig
from llmos.kernel.lazymodel import LazyBackend
from llmos.runtime import boot, session

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_weights_load_on_the_first_llm_call(real_backend):
    async def main():
        async with boot(KernelConfig()) as k:
            backend = k.backend
            sh = session(k, "test")
            with k.events.watch() as events:
                pid = await sh.proc.spawn(prog("exiter"))
                status = await sh.proc.wait(pid)
                before = backend.loaded
                tokens = backend.encode("hello world")  # the tokenizer is there already
                reply = await sh.llm.chat(QUESTION, max_tokens=12)
                kernel_events = []
                while True:
                    with trio.move_on_after(0.2):
                        event = await events.receive()
                        if event.kind == "kernel":
                            kernel_events.append(event.text)
                        continue
                    break
        async with kernel_with(real_backend) as eager:  # the same call on a model loaded up front
            want = await session(eager, "ref").llm.chat(QUESTION, max_tokens=12)
        return backend, status, before, tokens, reply, kernel_events, want

    backend, status, before, tokens, reply, kernel_events, want = trio.run(main)
    assert isinstance(backend, LazyBackend)
    assert status.exit_code == 3 and before is False  # an agent that made no LLM call: no weights loaded
    assert tokens == real_backend.encode("hello world")
    assert backend.loaded and backend.load_seconds > 0
    assert kernel_events[0].startswith("loading the model SmolLM2") and "loaded in" in kernel_events[1]
    assert reply.content == want.content and "Paris" in reply.content
    assert (backend.shape, backend.max_context, backend.eos_ids) == (real_backend.shape, real_backend.max_context, real_backend.eos_ids)
