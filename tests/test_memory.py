"""Virtual context memory on the real embedder and an embedded chromadb: replacement order per
policy, pinning, page faults into the prompt, isolation, persistence across a kernel restart,
KV reuse from the first changed page, typed errors, the shell's `mem`. The LLM is the tiny
llama here (its words do not matter); tests/test_memory_real.py uses the real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from conftest import errno_of, kernel_with
from rich.console import Console

from llmos.abi.errors import Errno
from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.memory.manager import RECALLED, Memory, MemoryConfig
from llmos.kernel.memory.pagetable import LRU, LRUK, Clock, Page, cut
from llmos.runtime import local_handle, session

EMBEDDER = Embedder()  # one for every test: loading it is the slow part
SYSTEM = "You are a careful assistant."
FACT = "The vault code of the harbour office is 4711, and Maria Okafor keeps the key."
FILLER = [
    "The weather report mentions light rain in the afternoon near the hills.",
    "A new bakery opened near the station and sells rye bread on Sundays.",
    "The museum extended its opening hours for the summer season this year.",
    "Traffic on the old bridge was slow this morning because of road works.",
    "The library is collecting used books for a charity sale next month.",
    "Someone left a blue bicycle by the fountain in the main square.",
    "The concert in the park was cancelled because of the strong wind.",
    "Prices of vegetables went up at the Saturday market after the frost.",
]


def with_memory(kernel, path: Path, **fields) -> Memory:
    """Give the kernel a memory with test settings and the shared embedder."""
    config = MemoryConfig(chroma_path=path, chroma_url=fields.pop("chroma_url", None), **fields)
    kernel.memory = Memory(kernel.backend.encode, kernel.backend.decode, EMBEDDER, config, kernel.backend.encode_chat)
    return kernel.memory


def run(backend, fn, path: Path, **fields):
    async def main():
        async with kernel_with(backend) as kernel:
            with_memory(kernel, path, **fields)
            return await fn(kernel, session(kernel, "test"))

    return trio.run(main)


async def fill(sh, n: int) -> None:
    for i in range(n):
        await sh.mem.store(FILLER[i % len(FILLER)])


# -- replacement policies (pure) -----------------------------------------------------------


def pages(n: int) -> list[Page]:
    return [Page("m", i, i * 10, i, "user", 10, f"page {i}") for i in range(n)]


def test_lru_evicts_least_recently_referenced():
    a, b, c = pages(3)
    for t, page in enumerate([a, b, c, a], start=1):
        page.touch(t)
    assert [p.number for p in LRU().victims([a, b, c], 10)] == [1]
    assert [p.number for p in LRU().victims([a, b, c], 25)] == [1, 2, 0]


def test_lru_k_evicts_pages_seen_once_first():
    a, b, c = pages(3)
    for t, page in enumerate([a, b, c, c, a], start=1):  # a: 1,5  b: 2  c: 3,4
        page.touch(t)
    # LRU would take b, c, a; LRU-2 takes b (one reference), then a (2nd-last reference at 1)
    assert [p.number for p in LRUK().victims([a, b, c], 30)] == [1, 0, 2]
    assert [p.number for p in LRU().victims([a, b, c], 30)] == [1, 2, 0]


def test_clock_gives_referenced_pages_a_second_chance():
    a, b, c, d = pages(4)
    a.referenced, b.referenced, c.referenced, d.referenced = True, False, True, False
    clock = Clock()
    assert [p.number for p in clock.victims([a, b, c, d], 10)] == [1]  # a loses its bit, b goes
    assert [p.number for p in clock.victims([a, c, d], 10)] == [3]  # c loses its bit, d goes
    assert [p.number for p in clock.victims([a, c], 10)] == [0]  # the hand wraps; a has no bit now
    assert not c.referenced


def test_cut_pages_at_word_boundaries(tiny_backend):
    enc, dec = tiny_backend.encode, tiny_backend.decode
    text = " ".join(FILLER) + " " + "x" * 300 + " ünïcödé ✓ end"
    pieces = cut(text, 16, enc, dec)
    assert "".join(t for t, _ in pieces) == text
    assert all(0 < n <= 16 for _, n in pieces) and len(pieces) > 8
    assert cut("short", 16, enc, dec) == [("short", len(enc("short")))]
    assert cut("", 16, enc, dec) == []


# -- the memory manager in a kernel --------------------------------------------------------


@pytest.mark.parametrize("policy", ["lru", "lru-k", "clock"])
def test_pinned_pages_never_leave(tiny_backend, tmp_path, policy):
    async def body(kernel, sh):
        system = await sh.mem.store(SYSTEM, role="system", pin=True)
        await fill(sh, 12)
        first = await sh.mem.stat()
        await sh.mem.budget(first.pinned_tokens + 20)  # squeeze: only pinned and ~one more page fit
        await fill(sh, 4)
        return system, first, await sh.mem.stat()

    system, first, last = run(tiny_backend, body, tmp_path, page_tokens=32, budget=80, policy=policy)
    assert first.evicted_pages > 0 and first.resident_tokens <= 80
    assert last.resident_tokens <= last.budget
    entry = next(e for e in last.entries if e.page == system[0])
    assert entry.pinned and entry.state == "resident" and entry.preview.startswith(SYSTEM[:20])
    assert last.page_outs >= first.page_outs + 4


def test_fault_pages_an_early_fact_back_into_the_prompt(tiny_backend, tmp_path):
    async def body(kernel, sh):
        await sh.mem.store(SYSTEM, role="system", pin=True)
        fact = await sh.mem.store(FACT)
        await fill(sh, 10)
        before = await sh.mem.stat()
        recorded = kernel.record_llm_calls()
        reply = await sh.mem.chat("What is the vault code of the harbour office?", max_tokens=4)
        prompt = kernel.backend.decode(recorded[0][0])
        after = await sh.mem.stat()
        await sh.mem.chat("Who keeps the key?", max_tokens=4, remember=False)  # asks, keeps nothing
        return fact, before, reply, prompt, after, await sh.mem.stat()

    fact, before, reply, prompt, after, unremembered = run(tiny_backend, body, tmp_path, page_tokens=64, budget=96)
    assert unremembered.pages == after.pages and unremembered.total_tokens == after.total_tokens
    assert next(e for e in before.entries if e.page == fact[0]).state == "evicted"
    assert fact[0] in reply.memory.faulted and fact[0] in reply.memory.prompt_pages
    why = next(r for r in reply.memory.recalled if r.page == fact[0])  # mem.chat says why it came back
    assert why.paged_in and why.why.dense > 0.3 and why.why.lexical_rank == 1 and why.why.score > 0
    assert RECALLED in prompt and "] " + FACT in prompt
    entry = next(e for e in after.entries if e.page == fact[0])
    assert entry.state == "resident" and entry.recalled and after.faults >= 1
    tokens = {e.page: e.tokens for e in after.entries}
    assert sum(tokens[p] for p in reply.memory.prompt_pages) <= after.budget


def test_recall_finds_evicted_pages_and_pages_them_in(tiny_backend, tmp_path):
    async def body(kernel, sh):
        fact = await sh.mem.store(FACT)
        await fill(sh, 10)
        hits = await sh.mem.recall("Who keeps the key of the harbour office?", k=2)
        peek = await sh.mem.recall("rye bread bakery", k=1, page_in=False)
        return fact, hits, peek, await sh.mem.stat()

    fact, hits, peek, st = run(tiny_backend, body, tmp_path, page_tokens=64, budget=96)
    assert hits[0].page == fact[0] and hits[0].text == FACT and hits[0].paged_in
    assert hits[0].why.dense_rank == 1 and hits[0].why.lexical > 0 and hits[0].score == hits[0].why.score
    assert next(e for e in st.entries if e.page == fact[0]).state == "resident"
    assert "bakery" in peek[0].text


def test_global_budget_evicts_across_processes(tiny_backend, tmp_path):
    async def body(kernel, sh):
        other = local_handle(kernel, kernel.session("other"))
        await fill(other, 4)
        await fill(sh, 6)
        return await other.mem.stat(), await sh.mem.stat()

    other, mine = run(tiny_backend, body, tmp_path, page_tokens=64, budget=1000, global_budget=120, policy="lru")
    assert mine.global_resident_tokens <= 120
    assert other.evicted_pages > 0 and mine.evicted_pages == 0  # the older pages went, whoever owned them


def test_writeback_cleans_pages_before_their_eviction(tiny_backend, tmp_path):
    """Past its low-water mark a memory's dirty pages are written in the background (the
    flusher), so evicting them later writes nothing; an open turn's pages are not written."""

    async def body(kernel, sh):
        memory = kernel.memory
        writes: list[int] = []
        swap = memory.swap
        write = swap.write
        swap.write = lambda name, pid, pages, vectors: (writes.append(len(pages)), write(name, pid, pages, vectors))[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(memory.flusher)
            await fill(sh, 4)  # 4 pages of 13-15 tokens in a budget of 60: past 0.75 of it
            table = memory.table(sh.pid)
            with trio.fail_after(10):
                while not all(p.stored for p in table.resident()):
                    await trio.sleep(0.01)
            written_back, evicted_before = list(writes), table.page_outs
            turn = await memory.begin_turn(sh.pid, [{"role": "user", "content": "A question not to keep."}], remember=False)
            await memory.writeback()
            turn_written = any(table.pages[n].stored for n in turn.pages)
            await memory.end_turn(sh.pid, None)
            nursery.cancel_scope.cancel()
        await sh.mem.budget(20)  # the turn's prompt and this squeeze evict clean pages: nothing to write
        return written_back, turn_written, writes, table.page_outs - evicted_before, memory.latency

    written_back, turn_written, writes, evicted, latency = run(
        tiny_backend, body, tmp_path, page_tokens=64, budget=60, policy="lru"
    )
    assert written_back and not turn_written
    assert evicted >= 2 and writes == written_back  # the evictions wrote nothing
    assert len(latency.writeback) >= 4 and len(latency.page_out) >= evicted


def test_writeback_of_a_dropped_memory_leaves_nothing_in_the_store(tiny_backend, tmp_path):
    """A process exits while its pages are being written back: what landed is deleted."""

    async def body(kernel, sh):
        memory = kernel.memory
        await fill(sh, 4)
        table = memory.table(sh.pid)
        write_back = memory.pager.write_back

        async def exit_meanwhile(t, copies):
            await write_back(t, copies)
            cleanup = memory.release(sh.pid)  # as Kernel.exit does, while the write was out
            if cleanup is not None:
                await cleanup()

        memory.pager.write_back = exit_meanwhile
        written = await memory.writeback()
        return written, memory.swap.catalog(table.name)

    written, left = run(tiny_backend, body, tmp_path, page_tokens=64, budget=60, policy="lru")
    assert written >= 4 and left == []


def test_a_forgotten_turn_leaves_nothing_in_the_store(tiny_backend, tmp_path):
    async def body(kernel, sh):
        other = local_handle(kernel, kernel.session("other"))
        memory = kernel.memory
        await fill(sh, 2)
        turn = await memory.begin_turn(sh.pid, [{"role": "user", "content": "A question not to keep."}], remember=False)
        await fill(other, 6)  # the global budget evicts sh's pages, writing its turn along
        table = memory.table(sh.pid)
        written = [n for n in turn.pages if table.pages[n].stored]
        await memory.end_turn(sh.pid, "a reply not to keep either")
        return written, turn.pages, {e.number for e in memory.swap.catalog(table.name)}

    written, pages, stored = run(tiny_backend, body, tmp_path, page_tokens=64, global_budget=60, policy="lru")
    assert written == pages  # the eviction did write the turn (so forgetting has work to do)
    assert not stored & set(pages)


def test_kv_is_rebuilt_from_the_first_changed_page(tiny_backend, tmp_path):
    async def body(kernel, sh):
        proc = kernel.procs.get(sh.pid)
        await sh.mem.store(SYSTEM, role="system", pin=True)
        recorded = kernel.record_llm_calls()
        first = await sh.mem.chat("Tell me about the bakery near the station.", max_tokens=6)
        kv_after_first = list(proc.kv.token_ids)
        second = await sh.mem.chat("And the museum?", max_tokens=6)  # nothing evicted: pure extension
        kv_after_second = list(proc.kv.token_ids)
        await sh.mem.budget(first.usage.prompt_tokens)  # the oldest pages must go
        squeezed = (await sh.mem.stat()).page_outs
        third = await sh.mem.chat("What about the concert in the park?", max_tokens=6)
        prompts = [ids for ids, _ in recorded]
        return first, second, third, kv_after_first, kv_after_second, prompts, squeezed

    first, second, third, kv1, kv2, prompts, squeezed = run(tiny_backend, body, tmp_path, page_tokens=64, budget=4000)
    assert second.memory.evicted == 0 and squeezed + third.memory.evicted > 0  # (the budget counts the prompt's frames)
    # nothing changed: everything the first call left in the KV is reused (bar a token or two
    # where the reply's text, tokenized again inside the chat template, merges differently)
    assert second.usage.cached_tokens == common_prefix(kv1, prompts[1]) >= len(prompts[0]) - 2
    # the oldest pages after the pinned system prompt left: reuse ends at that change, not at zero
    system = {"role": "system", "content": SYSTEM}
    system_prefix = common_prefix(  # the system message, whatever role comes after it
        tiny_backend.encode_chat([system, {"role": "user", "content": "."}]),
        tiny_backend.encode_chat([system, {"role": "assistant", "content": "."}]),
    )
    assert third.usage.cached_tokens == common_prefix(kv2, prompts[2])
    assert system_prefix <= third.usage.cached_tokens < len(prompts[2]) <= len(prompts[0])  # the budget holds it
    assert system_prefix > 5


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return min(n, len(b) - 1)


# -- isolation, persistence ----------------------------------------------------------------

SNOOPER = '''
from llmos.agents.sdk import SyscallError

async def main(sys, args):
    out = {}
    for name, call in (("attach", sys.mem.attach(args[1])), ("stat", sys.mem.stat(int(args[0])))):
        try:
            await call
            out[name] = "allowed"
        except SyscallError as exc:
            out[name] = exc.errno.value
    await sys.mem.store("my own notes about the garden and the tomatoes")
    out["texts"] = [h.text for h in await sys.mem.recall("vault code harbour office key", k=8)]
    return out
'''


def test_one_process_cannot_read_anothers_pages(tiny_backend, tmp_path):
    agent = tmp_path / "snooper.py"
    agent.write_text(SNOOPER)

    async def body(kernel, sh):
        await sh.mem.attach("owner-notes")
        await sh.mem.store(FACT)
        await fill(sh, 8)
        pid = await sh.proc.spawn(str(agent), str(sh.pid), "owner-notes")
        status = await sh.proc.wait(pid)
        return status

    status = run(tiny_backend, body, tmp_path / "chroma", page_tokens=64, budget=64)
    assert status.exit_code == 0, status.reason
    result = status.result
    assert result["texts"] == ["my own notes about the garden and the tomatoes"]
    assert result["stat"] == "EPERM" and result["attach"] == "EBUSY"


def test_named_memory_survives_kernel_restart(tiny_backend, tmp_path):
    async def first_life(kernel, sh):
        await sh.mem.attach("survivor")
        await sh.mem.store(SYSTEM, role="system", pin=True)
        fact = await sh.mem.store(FACT)
        await fill(sh, 10)
        return fact, await sh.mem.stat()

    async def second_life(kernel, sh):
        pages = await sh.mem.attach("survivor")
        st = await sh.mem.stat()
        hits = await sh.mem.recall("What is the vault code?", k=1)
        return pages, st, hits

    fact, before = run(tiny_backend, first_life, tmp_path, page_tokens=64, budget=96)
    pages, after, hits = run(tiny_backend, second_life, tmp_path, page_tokens=64, budget=96)
    assert pages == before.pages == after.pages
    pinned = [e for e in after.entries if e.pinned]
    assert len(pinned) == 1 and pinned[0].state == "resident"  # pinned pages come back at once
    assert after.entries[-1].state == "resident" and after.entries[-1].preview  # and the newest ones
    assert 0 < after.resident_tokens <= after.budget
    assert hits[0].page == fact[0] and hits[0].text == FACT


WRITER = '''
async def main(sys, args):
    await sys.mem.attach(args[0])
    await sys.mem.store(args[1])
    return (await sys.mem.stat()).memory
'''


def test_named_memory_is_written_out_when_its_process_exits(tiny_backend, tmp_path):
    agent = tmp_path / "writer.py"
    agent.write_text(WRITER)

    async def body(kernel, sh):
        status = await sh.proc.wait(await sh.proc.spawn(str(agent), "handover", FACT))
        for _ in range(200):  # the write-out runs in the background
            table = kernel.memory.tables.get("handover")
            if table is not None and all(p.stored for p in table.pages.values()):
                break
            await trio.sleep(0.05)
        await sh.mem.attach("handover")
        return status, await sh.mem.recall("vault code", k=1, page_in=False)

    status, hits = run(tiny_backend, body, tmp_path / "chroma")
    assert status.exit_code == 0 and status.result == "handover"
    assert hits[0].text == FACT


def test_anonymous_memory_is_deleted_when_its_process_exits(tiny_backend, tmp_path):
    agent = tmp_path / "anon.py"
    agent.write_text(
        "async def main(sys, args):\n"
        "    for i in range(6):\n"
        f"        await sys.mem.store({FILLER[0]!r} + str(i))\n"
        "    return (await sys.mem.stat()).memory\n"
    )

    async def body(kernel, sh):
        status = await sh.proc.wait(await sh.proc.spawn(str(agent)))
        name = status.result
        for _ in range(200):
            if not kernel.memory.swap.catalog(name):
                break
            await trio.sleep(0.05)
        return name, kernel.memory.swap.catalog(name)

    name, left = run(tiny_backend, body, tmp_path / "chroma", page_tokens=64, budget=40)
    assert name.startswith("anon-") and left == []


# -- errors, laziness, the shell -----------------------------------------------------------


def test_bad_arguments_get_typed_errors_and_change_nothing(tiny_backend, tmp_path):
    async def body(kernel, sh):
        await sh.mem.store(SYSTEM, role="system", pin=True)
        await fill(sh, 2)
        before = await sh.mem.stat()
        codes = {
            "empty": await errno_of(sh.call("mem.store", text="")),
            "role": await errno_of(sh.call("mem.store", text="x", role="wizard")),
            "k": await errno_of(sh.call("mem.recall", query="x", k=0)),
            "missing_page": await errno_of(sh.mem.pin(999)),
            "no_pages": await errno_of(sh.call("mem.pin", pages=[])),
            "short_name": await errno_of(sh.mem.attach("x")),
            "bad_name": await errno_of(sh.mem.attach("no spaces/here")),
            "late_attach": await errno_of(sh.mem.attach("too-late")),
            "no_pid": await errno_of(sh.mem.stat(999)),
            "zero_budget": await errno_of(sh.mem.budget(0)),
            "huge_budget": await errno_of(sh.mem.budget(10**9)),
            "pin_over": await errno_of(sh.mem.store("y " * 200, pin=True)),
            "turn_over": await errno_of(sh.mem.chat("z " * 300, max_tokens=2)),
        }
        return codes, before, await sh.mem.stat()

    codes, before, after = run(tiny_backend, body, tmp_path, page_tokens=64, budget=120)
    assert codes == {
        "empty": Errno.EINVAL, "role": Errno.EINVAL, "k": Errno.EINVAL, "missing_page": Errno.ENOENT,
        "no_pages": Errno.EINVAL, "short_name": Errno.EINVAL, "bad_name": Errno.EINVAL,
        "late_attach": Errno.EBUSY, "no_pid": Errno.ESRCH, "zero_budget": Errno.EINVAL,
        "huge_budget": Errno.EINVAL, "pin_over": Errno.EAGAIN, "turn_over": Errno.EAGAIN,
    }
    assert after.pages == before.pages and after.total_tokens == before.total_tokens


def test_a_second_chat_while_one_runs_is_busy_and_stores_nothing(tiny_backend, tmp_path):
    async def body(kernel, sh):
        proc = kernel.procs.get(sh.pid)
        async with trio.open_nursery() as n:
            n.start_soon(lambda: sh.mem.chat("Tell me a long story.", max_tokens=300))
            while proc.wchan != "llm":
                await trio.sleep(0.01)
            before = await sh.mem.stat()
            code = await errno_of(sh.mem.chat("And another one?", max_tokens=2))
            after = await sh.mem.stat()
            n.cancel_scope.cancel()
        return code, before, after

    code, before, after = run(tiny_backend, body, tmp_path)
    assert code is Errno.EBUSY and after.pages == before.pages == 1


def test_max_memory_pages_quota_kills_the_hoarder(tiny_backend, tmp_path):
    from llmos.abi.proc import EXIT_QUOTA
    from llmos.kernel.proc.capabilities import Capabilities
    from llmos.kernel.proc.quota import Quota

    async def body(kernel, sh):
        box = local_handle(kernel, kernel.session("box", Capabilities(quota=Quota(max_memory_pages=3))))
        for i in range(3):
            await box.mem.store(FILLER[i])
        code = await errno_of(box.mem.store(FILLER[3]))
        proc = kernel.procs.lookup(box.pid)
        return code, proc.exit_code, proc.exit_reason

    code, exit_code, reason = run(tiny_backend, body, tmp_path)
    assert code is Errno.EKILLED and exit_code == EXIT_QUOTA
    assert reason == "quota exceeded: max_memory_pages 3 (wanted 4)"


def test_kernel_that_never_uses_memory_pays_nothing(tiny_backend, tmp_path):
    async def main():
        async with kernel_with(tiny_backend) as kernel:
            sh = session(kernel, "test")
            await sh.llm.chat("hello", max_tokens=3)
            idle = (kernel.memory._swap, kernel.embedder._model)
            memory = with_memory(kernel, tmp_path)
            await sh.mem.store("a short note that fits the budget")  # stored, never evicted
            return idle, memory._swap

    (swap, model), swap_after_store = trio.run(main)
    assert swap is None and model is None
    assert swap_after_store is None


def test_booting_does_not_import_the_vector_store():
    import subprocess
    import sys

    code = "import sys, llmos.runtime, llmos.syscalls; print('chromadb' in sys.modules, 'sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_shell_mem_shows_the_page_table(tiny_backend, tmp_path):
    from llmos.shell.shell import Shell

    async def body(kernel, sh):
        await sh.mem.store(SYSTEM, role="system", pin=True)
        await fill(sh, 6)
        await sh.call("mem.store", text="Maria adopted a beagle named Biscuit.", time=1683540000.0)  # 8 May 2023
        await sh.mem.recall("Biscuit the beagle", k=1)
        console = Console(record=True, width=220)
        shell = Shell(sh, console)
        await shell.execute(f"mem {sh.pid}")
        await shell.execute("mem")
        await shell.execute("mem 999")
        return console.export_text()

    out = run(tiny_backend, body, tmp_path, page_tokens=64, budget=64)
    assert "PAGE" in out and "resident" in out and "evicted" in out and "pinned" in out
    assert "page outs" in out and "turn fault p99" in out
    assert "WHY RECALLED" in out and "dense 0." in out and "bm25" in out and "2023-05-08" in out
    assert "usage: mem PID" in out and "ESRCH" in out


@pytest.fixture(autouse=True)
def _no_chroma_url(monkeypatch):
    monkeypatch.delenv("LLMOS_CHROMA_URL", raising=False)
    yield


if os.environ.get("LLMOS_CHROMA_URL"):  # the tests here are about the embedded store
    pytestmark = pytest.mark.skip("LLMOS_CHROMA_URL is set")


def test_memory_settings_come_from_the_command_line_into_the_kernel(tiny_backend):
    from llmos.shell.cli import build_parser, config_from

    args = build_parser().parse_args(
        ["demo", "--mem-page-tokens", "64", "--mem-budget", "512", "--mem-policy", "lru", "--chroma-url", "http://localhost:9"]
    )
    config = config_from(args)
    assert (config.memory.page_tokens, config.memory.budget, config.memory.policy) == (64, 512, "lru")

    async def main():
        async with kernel_with(tiny_backend, memory=config.memory) as kernel:
            return kernel.memory.config, type(kernel.memory.policy).__name__

    memory, policy = trio.run(main)
    assert memory.chroma_url == "http://localhost:9" and memory.budget == 512 and policy == "LRU"
