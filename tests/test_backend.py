"""The batched backend: correctness against transformers' own generate, batch invariance,
chunked prefill, sampling and stop strings."""

from __future__ import annotations

import pytest
import torch
import trio
from conftest import kernel_with

from llmos.abi.errors import Errno, SyscallError
from llmos.kernel.model.backend import WorkItem
from llmos.kernel.model.sampling import SamplingParams, make_generator, sample
from llmos.kernel.model.sequence import _safe_prefix
from llmos.runtime import session

PROMPTS = ["What is the capital of France?", "Name three colors.", "Write one sentence about the sea."]


def greedy(backend, prompt_ids: list[int], n: int, chunk: int | None = None) -> list[int]:
    """Greedy decode of one sequence through Backend.step, optionally prefilling in chunks."""
    kv = backend.new_kv()
    chunk = chunk or len(prompt_ids)
    for start in range(0, len(prompt_ids), chunk):
        piece = prompt_ids[start : start + chunk]
        logits = backend.step([WorkItem(kv, piece, start + chunk >= len(prompt_ids))])
    out = [int(logits[0].argmax())]
    _decode(backend, [(kv, out)], n - 1)
    return out


def _decode(backend, kvs_tokens: list[tuple], steps: int) -> None:
    """Decode every (kv, out) pair together for `steps` steps, appending to out."""
    for _ in range(steps):
        logits = backend.step([WorkItem(kv, [out[-1]], True) for kv, out in kvs_tokens])
        for row, (_, out) in zip(logits, kvs_tokens):
            out.append(int(row.argmax()))


def _start(backend, text: str) -> tuple:
    kv = backend.new_kv()
    logits = backend.step([WorkItem(kv, backend.encode(text), True)])
    return kv, [int(logits[0].argmax())]


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
    batched = [(kv, [int(row.argmax())]) for kv, row in zip(kvs, logits)]
    _decode(real_backend, batched, 19)
    assert [out for _, out in batched] == alone


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
    from llmos.kernel.model.backend import Backend

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
    from llmos.kernel.model import modelstore
    from llmos.kernel.model.backend import Backend

    folder = modelstore.converted_dir(modelstore.resolve("smollm2"))
    local = Backend.load(str(folder))
    ids = local.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    assert greedy(local, ids, 8) == greedy(real_backend, ids, 8)


# -- the decode slab: decoders' caches seated side by side ------------------------------------


def test_slab_seats_are_reclaimed_without_changing_outputs(tiny_backend):
    from llmos.kernel.model.backend import Backend

    texts = ["first prompt", "a second, longer prompt here", "third"]
    alone = []
    for t in texts:
        pair = _start(tiny_backend, t)
        _decode(tiny_backend, [pair], 12)
        alone.append(pair[1])
    # Two seats for three processes that take turns: seats are reclaimed and caches moved out
    # and back in between steps.
    small = Backend(tiny_backend.model, tiny_backend.tokenizer, "tiny-2-seats", slots=2)
    small.slab.data.fill_(float("nan"))  # as uninitialised memory may be: never read unmasked
    a, b, c = (_start(small, t) for t in texts)
    _decode(small, [a, b], 4)
    _decode(small, [c], 4)  # takes the least recently used seat
    _decode(small, [a, c], 4)
    _decode(small, [b], 8)
    _decode(small, [a, c], 4)
    assert [a[1], b[1], c[1]] == alone
    _decode(small, [a, b, c], 1)  # more decoders than seats: the slab grows
    assert small.slab.slots == 3


def test_slab_mixes_with_prefill_and_grows_past_its_capacity(tiny_backend):
    from llmos.kernel.model.backend import Backend
    from llmos.kernel.model.kvcache import GROWTH

    long_prompt = tiny_backend.encode("many words " * 40)
    alone_long = greedy(tiny_backend, long_prompt, 6)
    short = _start(tiny_backend, "short one")
    _decode(tiny_backend, [short], GROWTH + 20)  # past the slab's first capacity
    reference = short[1]

    fresh = Backend(tiny_backend.model, tiny_backend.tokenizer, "tiny-fresh")
    kv, out = _start(fresh, "short one")
    long_kv = fresh.new_kv()
    # The long prompt prefills in chunks in the same steps as the decoder.
    for start in range(0, len(long_prompt), 16):
        piece = long_prompt[start : start + 16]
        last = start + 16 >= len(long_prompt)
        logits = fresh.step([WorkItem(kv, [out[-1]], True), WorkItem(long_kv, piece, last)])
        out.append(int(logits[0].argmax()))
    long_out = [int(logits[1].argmax())]
    for _ in range(5):
        logits = fresh.step([WorkItem(long_kv, [long_out[-1]], True), WorkItem(kv, [out[-1]], True)])
        long_out.append(int(logits[0].argmax()))
        out.append(int(logits[1].argmax()))
    _decode(fresh, [(kv, out)], GROWTH + 21 - len(out))
    assert long_out == alone_long
    assert out == reference
    assert fresh.slab.capacity > GROWTH


def test_contexts_longer_than_the_slab_decode_alone_the_same(tiny_backend):
    from llmos.kernel.model.backend import Backend
    from llmos.kernel.model.kvcache import GROWTH, DecodeSlab

    ids = tiny_backend.encode("long context " * 160)
    assert len(ids) > GROWTH
    reference = greedy(tiny_backend, ids, 8)
    limited = Backend(tiny_backend.model, tiny_backend.tokenizer, "tiny-limited")
    limited.slab = DecodeSlab(limited.shape, 4, GROWTH)
    assert greedy(limited, ids, 8) == reference
    assert all(limited.slab.owner(s) is None for s in range(limited.slab.slots))


def test_evicting_a_seated_cache_frees_its_seat(tiny_backend):
    kv, out = _start(tiny_backend, "evict me")
    _decode(tiny_backend, [(kv, out)], 2)
    slot = kv.slot
    assert slot is not None and tiny_backend.slab.owner(slot) is kv
    kv.drop()
    assert tiny_backend.slab.owner(slot) is None


def test_sliding_window_models_are_exact_within_the_window_and_stop_there(tiny_backend):
    from transformers import MistralConfig, MistralForCausalLM

    from llmos.kernel.model.backend import Backend

    tokenizer = tiny_backend.tokenizer
    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, sliding_window=96,
        eos_token_id=tokenizer.eos_token_id,
    )
    backend = Backend(MistralForCausalLM(cfg).eval(), tokenizer, "tiny-mistral")
    assert backend.runner is None and backend.max_context == 96
    ids = backend.encode("a short prompt about windows")
    assert greedy(backend, ids, 10) == backend.hf_generate(ids, 10, ignore_eos=True)

    async def main():
        async with kernel_with(backend) as kernel:
            with pytest.raises(SyscallError) as info:
                await session(kernel, "w").llm.chat("word " * 200, max_tokens=4)
            return info.value

    err = trio.run(main)
    assert err.errno is Errno.E2BIG and "holds 96" in str(err)


def test_incremental_detokenization_equals_decoding_everything(real_backend):
    from llmos.kernel.model.sampling import SamplingParams
    from llmos.kernel.model.sequence import Sequence

    text = "Héllo wörld — naïve café. 東京は大きい。 Emoji: 🚀🔥👩‍💻! Code: `x = {'a': [1, 2]}`\n\ttabs  and  spaces."
    ids = real_backend.encode(text)
    seq = Sequence(None, [1], SamplingParams(max_tokens=10_000), None, real_backend.decode, frozenset())  # type: ignore[arg-type]
    released = ""
    for i, token in enumerate(ids):
        released += seq.append(token)
        assert seq._full_text() == real_backend.decode(ids[: i + 1])
    assert released == real_backend.decode(ids) == seq.text


def test_a_long_context_is_attended_alone_and_the_rest_together(tiny_backend):
    from types import SimpleNamespace

    from llmos.kernel.model.backend import _worth_batching

    def items(*lengths):
        return [SimpleNamespace(kv=SimpleNamespace(length=n)) for n in lengths]

    mixed = items(*([100] * 31 + [2000]))
    assert sorted(d.kv.length for d in _worth_batching(mixed)) == [100] * 31
    assert len(_worth_batching(items(*([200] * 32)))) == 32

    # End to end: a long decoder among short ones gives the tokens it gives alone.
    long_ids = tiny_backend.encode("long context " * 160)
    reference = greedy(tiny_backend, long_ids, 6)
    shorts = [_start(tiny_backend, f"short {i}") for i in range(3)]
    alone_shorts = []
    for i in range(3):
        pair = _start(tiny_backend, f"short {i}")
        _decode(tiny_backend, [pair], 6)
        alone_shorts.append(pair[1])
    long_kv = tiny_backend.new_kv()
    logits = tiny_backend.step([WorkItem(long_kv, long_ids, True)])
    long_out = [int(logits[0].argmax())]
    for _ in range(6):
        logits = tiny_backend.step(
            [WorkItem(long_kv, [long_out[-1]], True)] + [WorkItem(kv, [out[-1]], True) for kv, out in shorts]
        )
        long_out.append(int(logits[0].argmax()))
        for row, (_, out) in zip(logits[1:], shorts):
            out.append(int(row.argmax()))
    assert long_out[:6] == reference
    assert [out for _, out in shorts] == alone_shorts
    assert long_kv.slot is None  # it was not seated


def test_a_seated_process_prefilling_beside_longer_decoders_keeps_its_cache(tiny_backend):
    """A seated process's next prompt is prefilled through its seat; the batch of the other
    decoders, growing past it, must not clear those positions when it makes seats safe to read."""
    from llmos.kernel.model.backend import Backend

    turn = tiny_backend.encode(" and then another question comes along " * 4)

    def run(backend, with_neighbour: bool) -> torch.Tensor:
        kv, out = _start(backend, "first turn")
        _decode(backend, [(kv, out)], 2)  # seated
        neighbour = _start(backend, "hi") if with_neighbour else None
        pending = [out[-1]] + turn
        rows = []
        for start in range(0, len(pending), 4):  # small chunks: the neighbour's context grows into ours
            items = [WorkItem(kv, pending[start : start + 4], True)]
            if neighbour is not None:
                items.append(WorkItem(neighbour[0], [neighbour[1][-1]], True))
            logits = backend.step(items)
            rows.append(logits[0])
            if neighbour is not None:
                neighbour[1].append(int(logits[-1].argmax()))
        return torch.stack(rows)

    fresh = Backend(tiny_backend.model, tiny_backend.tokenizer, "tiny-fresh-2")
    fresh.slab.data.fill_(float("nan"))
    assert torch.allclose(run(fresh, with_neighbour=True), run(tiny_backend, with_neighbour=False), atol=1e-5)


def test_a_prompt_chunk_whose_seat_is_reclaimed_in_the_same_step_still_fits(tiny_backend):
    from llmos.kernel.model.backend import Backend
    from llmos.kernel.model.kvcache import GROWTH

    one_seat = Backend(tiny_backend.model, tiny_backend.tokenizer, "tiny-1-seat", slots=1)
    first = " ".join(f"w{i}" for i in range(400))
    first = one_seat.decode(one_seat.encode(first)[: GROWTH - 10])  # just under one growth step
    long = _start(one_seat, " ".join(f"w{i}" for i in range(200)))
    assert long[0].length > GROWTH
    _decode(one_seat, [long], 1)  # the slab grows past one growth step
    a, b = _start(one_seat, first), _start(one_seat, "second")
    _decode(one_seat, [a], 1)  # a holds the only seat; its next turn fits in the seat
    turn = one_seat.encode(" a new turn for the first process" * 3)
    assert a[0].length + 1 + len(turn) > GROWTH  # more than a cache moved out just as it is holds
    # b decodes (takes a's seat) while a prefills its next turn in the same step.
    logits = one_seat.step([WorkItem(b[0], [b[1][-1]], True), WorkItem(a[0], [a[1][-1]] + turn, True)])
    assert logits.shape[0] == 2 and b[0].slot == 0 and a[0].slot is None


def test_the_slab_gives_memory_back_when_long_contexts_are_gone(tiny_backend):
    from llmos.kernel.model.backend import Backend
    from llmos.kernel.model.kvcache import GROWTH

    fresh = Backend(tiny_backend.model, tiny_backend.tokenizer, "tiny-shrink")
    ids = fresh.encode(" ".join(f"w{i}" for i in range(400)))[: 3 * GROWTH - 20]
    long_kv = fresh.new_kv()
    logits = fresh.step([WorkItem(long_kv, ids, True)])
    fresh.step([WorkItem(long_kv, [int(logits[0].argmax())], True)])
    assert fresh.slab.capacity >= 3 * GROWTH - 19
    long_kv.drop()  # the process exited, or its cache was evicted

    short = _start(fresh, "short again")
    _decode(fresh, [short], 6)
    assert fresh.slab.capacity == GROWTH
    alone = _start(tiny_backend, "short again")
    _decode(tiny_backend, [alone], 6)
    assert short[1] == alone[1]


def test_ignore_eos_never_samples_an_end_token_greedy_or_not(real_backend):
    """`ignore_eos` bans end tokens (llama.cpp's server and transformers' min_new_tokens do the
    same): greedy, through the engine (and its fp32 head screen with the ban), equals
    transformers' generate with min_new_tokens; sampled, no end token is ever drawn."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = real_backend.encode_chat(messages)
    reference = real_backend.decode(real_backend.hf_generate(ids, 40, ignore_eos=True))
    plain = real_backend.hf_generate(ids, 40)
    assert len(plain) < 40  # the question has a short answer: an end token comes early

    async def main():
        async with kernel_with(real_backend) as kernel:
            sh = session(kernel)
            greedy_reply = await sh.llm.chat(messages[0]["content"], max_tokens=40, ignore_eos=True)
            sampled = [
                await sh.llm.chat(messages[0]["content"], max_tokens=40, ignore_eos=True, temperature=1.0, seed=s)
                for s in range(3)
            ]
            return greedy_reply, sampled

    greedy_reply, sampled = trio.run(main)
    assert greedy_reply.usage.completion_tokens == 40 and greedy_reply.content == reference
    for reply in sampled:
        assert reply.usage.completion_tokens == 40 and "<|im_end|>" not in reply.content
