"""The batched backend: correctness against transformers' own generate, batch invariance,
chunked prefill, sampling and stop strings."""

from __future__ import annotations

import torch
import trio

from conftest import kernel_with
from llmos.kernel.backend import WorkItem
from llmos.kernel.sampling import SamplingParams, make_generator, sample
from llmos.kernel.sequence import _safe_prefix
from llmos.runtime import session

PROMPTS = ["What is the capital of France?", "Name three colors.", "Write one sentence about the sea."]


def greedy(backend, prompt_ids: list[int], n: int, chunk: int | None = None) -> list[int]:
    """Greedy decode of one sequence through Backend.step, optionally prefilling in chunks."""
    kv = backend.new_kv()
    chunk = chunk or len(prompt_ids)
    for start in range(0, len(prompt_ids), chunk):
        piece = prompt_ids[start : start + chunk]
        logits = backend.step([WorkItem(kv, piece, start + chunk >= len(prompt_ids))])
    out = []
    for _ in range(n):
        token = int(logits[0].argmax())
        out.append(token)
        logits = backend.step([WorkItem(kv, [token], True)])
    return out


def test_real_greedy_matches_hf_generate(real_backend):
    ids = real_backend.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    reference = real_backend.hf_generate(ids, 24)
    ours = greedy(real_backend, ids, len(reference))
    assert ours == reference
    assert "Paris" in real_backend.decode(ours)


def test_real_batched_equals_alone(real_backend):
    prompts = [real_backend.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    alone = [greedy(real_backend, p, 20) for p in prompts]
    kvs = [real_backend.new_kv() for _ in prompts]
    logits = real_backend.step([WorkItem(kv, p, True) for kv, p in zip(kvs, prompts)])
    batched = [[] for _ in prompts]
    for _ in range(20):
        tokens = [int(row.argmax()) for row in logits]
        for out, t in zip(batched, tokens):
            out.append(t)
        logits = real_backend.step([WorkItem(kv, [t], True) for kv, t in zip(kvs, tokens)])
    assert batched == alone


def test_chunked_prefill_equals_one_shot(tiny_backend):
    ids = tiny_backend.encode("a fairly long prompt " * 20)
    assert greedy(tiny_backend, ids, 12, chunk=7) == greedy(tiny_backend, ids, 12)


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_backend):
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=1234)
    ids = tiny_backend.encode("hello there")
    kv = tiny_backend.new_kv()
    row = tiny_backend.step([WorkItem(kv, ids, True)])[0]
    draws = [sample(row, params, make_generator(1234)) for _ in range(3)]
    assert len(set(draws)) == 1
    other = tiny_backend.new_kv()
    rows = tiny_backend.step([WorkItem(other, tiny_backend.encode("unrelated"), True), WorkItem(tiny_backend.new_kv(), ids, True)])
    assert torch.allclose(rows[1], row, atol=1e-5)
    assert sample(rows[1], params, make_generator(1234)) == draws[0]


def test_stop_strings_are_held_back_and_cut():
    assert _safe_prefix("hello wor", ["world"]) == "hello "
    assert _safe_prefix("hello", ["xyz"]) == "hello"
    assert _safe_prefix("ab\ufffd", []) == "ab"


def test_real_chat_is_deterministic_and_stops(real_backend):
    async def main():
        async with kernel_with(real_backend) as kernel:
            sh = session(kernel)
            a = await sh.llm.chat("Count from one to ten in words.", max_tokens=40)
            b = await sh.llm.chat("Count from one to ten in words.", max_tokens=40)
            stop = a.content[len(a.content) // 2 :][:6]  # a piece of text the model will produce
            c = await sh.llm.chat("Count from one to ten in words.", max_tokens=40, stop=[stop])
            return a, b, c, stop

    a, b, c, stop = trio.run(main)
    assert a.content == b.content and len(a.content) > 12
    assert b.usage.cached_tokens > 0  # the second call reused the first call's KV
    assert c.finish_reason == "stop" and stop not in c.content
    assert c.content == a.content[: a.content.index(stop)]


def test_real_two_processes_at_once_match_alone(real_backend):
    async def agent_answers(kernel, prompts):
        results = {}

        async def one(p):
            child = session(kernel, "child")
            results[p] = (await child.llm.chat(p, max_tokens=30)).content

        async with trio.open_nursery() as n:
            for p in prompts:
                n.start_soon(one, p)
        return results

    async def main():
        async with kernel_with(real_backend) as kernel:
            together = await agent_answers(kernel, PROMPTS[:2])
            alone = {}
            for p in PROMPTS[:2]:
                alone.update(await agent_answers(kernel, [p]))
            return together, alone, kernel.engine.stats

    together, alone, stats = trio.run(main)
    assert together == alone
    assert max(stats.batch_sizes) == 2  # they really shared forward passes


def test_lean_runner_matches_transformers_forward(tiny_backend):
    from llmos.kernel.backend import Backend

    assert tiny_backend.runner is not None  # llama: the lean forward is in use
    plain = Backend(tiny_backend.model, tiny_backend.tokenizer, "tiny-plain", lean=False)
    assert plain.runner is None
    ids = tiny_backend.encode("compare the two forward passes " * 6)
    assert greedy(plain, ids, 16, chunk=9) == greedy(tiny_backend, ids, 16, chunk=9)


def test_streaming_chunks_add_up_to_the_reply(tiny_backend):
    async def main():
        async with kernel_with(tiny_backend) as kernel:
            sh = session(kernel)
            pieces: list[str] = []
            reply = await sh.llm.chat("stream this", max_tokens=20, on_text=pieces.append)
            async with sh.llm.stream("stream this", max_tokens=20) as stream:
                streamed = [piece async for piece in stream]
            return reply, pieces, streamed, stream.response

    reply, pieces, streamed, response = trio.run(main)
    assert len(pieces) > 1 and "".join(pieces) == reply.content
    assert "".join(streamed) == response.content == reply.content


def test_local_checkpoint_directory_loads_as_backend(real_backend):
    """A local transformers checkpoint (here: the converted default model) works as --model."""
    from llmos.kernel import modelstore
    from llmos.kernel.backend import Backend

    folder = modelstore.converted_dir(modelstore.resolve("smollm2"))
    local = Backend.load(str(folder))
    ids = local.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    assert greedy(local, ids, 8) == greedy(real_backend, ids, 8)
