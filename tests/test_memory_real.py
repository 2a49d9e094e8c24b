"""Paged memory on the real model: a fact evicted early comes back through a page fault and
the model answers from it; KV is rebuilt only from the first changed page; a prompt never
exceeds its memory's budget; a second turn reuses the first turn's prompt from KV; the
benchmark runs end to end (a short version)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime

import trio
from rich.console import Console
from test_memory import common_prefix, fill, run

from llmos.benchmarks import memory as bench_memory
from llmos.kernel.memory.manager import RECALLED

SYSTEM = "You are a helpful assistant. Answer in a few words."
FACT = "Maria Okafor plays the cello."



def test_real_model_answers_from_a_paged_in_fact(real_backend, tmp_path):
    async def body(kernel, sh):
        await sh.mem.store(SYSTEM, role="system", pin=True)
        fact = await sh.mem.store(FACT)
        await fill(sh, 10)
        before = await sh.mem.stat()
        recorded = kernel.record_llm_calls()
        reply = await sh.mem.chat("Which instrument does Maria Okafor play?", max_tokens=12)
        prompt = kernel.backend.decode(recorded[0][0])
        return fact, before, reply, prompt

    fact, before, reply, prompt = run(real_backend, body, tmp_path, page_tokens=64, budget=120)
    assert next(e for e in before.entries if e.page == fact[0]).state == "evicted"
    assert fact[0] in reply.memory.faulted
    assert RECALLED in prompt and "] " + FACT in prompt
    assert "cello" in reply.content.lower(), reply.content  # the 135M model manages this one


def test_real_model_kv_rebuilt_from_first_changed_page(real_backend, tmp_path):
    async def body(kernel, sh):
        proc = kernel.procs.get(sh.pid)
        await sh.mem.store(SYSTEM, role="system", pin=True)
        recorded = kernel.record_llm_calls()
        await sh.mem.chat("Name a fruit.", max_tokens=6)
        second = await sh.mem.chat("Name a colour.", max_tokens=6)
        kv = list(proc.kv.token_ids)
        await sh.mem.budget(second.usage.prompt_tokens)  # the reply and a new turn do not fit: pages must go
        third = await sh.mem.chat("Name an animal.", max_tokens=6)
        return second, third, kv, [ids for ids, _ in recorded], await sh.mem.stat()

    second, third, kv, prompts, st = run(real_backend, body, tmp_path, page_tokens=64, budget=4000)
    assert second.usage.cached_tokens >= len(prompts[0]) - 2
    assert st.page_outs > 0 and prompts[2][: len(prompts[1])] != prompts[1]  # not an extension
    assert third.usage.cached_tokens == common_prefix(kv, prompts[2])
    assert 0 < third.usage.cached_tokens < len(prompts[1])


def test_benchmark_short_run(real_backend, tmp_path):
    out = tmp_path / "bench.json"
    args = bench_memory.build_parser().parse_args(
        ["--facts", "30", "--filler", "1", "--questions", "2", "--max-tokens", "8", "--json", str(out),
         "--conversations", "1", "--sessions", "6", "--shares", "0.1", "--answers", "1", "--variants", "kernel,dense-only"]
    )
    console = Console(record=True, width=200)
    report = trio.run(bench_memory.bench, args, console, real_backend)
    for table in bench_memory.render(report):
        console.print(table)
    text = console.export_text()
    assert "residency recall" in text and "sliding window" in text and "evidence recall" in text and "dense" in text
    facts = report["facts"]
    paged, window = facts["paged"], facts["window"]
    assert facts["config"]["budget_tokens"] <= max(128, 0.1 * facts["config"]["history_tokens"])
    assert len(paged["answers"]) == len(window["answers"]) == 2
    assert paged["page_outs"] > 0 and paged["faults"] > 0
    assert paged["residency_recall"] >= 0.5 > window["residency_recall"]
    row = report["dialogue"]["shares"]["0.10"]
    questions = report["dialogue"]["config"]["questions"]
    for name in ("kernel", "dense-only", "dense"):
        assert row[name]["questions"] == questions > 5 and 0 < row[name]["evidence_recall"] <= 1
        assert row[name]["answer_accuracy"] is not None  # one question per conversation answered by the model
    # pages are written back in the background, so an eviction mostly drops clean pages (~0 ms)
    assert row["kernel"]["fault_p99_ms"] > 0 and row["kernel"]["writeback_p99_ms"] > 0 and row["kernel"]["page_out_p99_ms"] >= 0
    assert [label for label, _ in bench_memory.targets(report)]


def test_remember_example_continues_across_kernel_restarts(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", LLMOS_HOME=str(tmp_path), LLMOS_THREADS="1")
    env.pop("LLMOS_CHROMA_URL", None)

    def llmos_run(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "llmos", "run", "remember", *args],
            capture_output=True, text=True, timeout=600, env=env,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    first = llmos_run("My sister's name is Ingrid.")
    second = llmos_run("What is my sister's name?")
    other = llmos_run("--memory", "work", "The review is on Friday.")
    assert "memory remember: 3 pages" in first  # system prompt, message, reply
    assert "memory remember: 5 pages (5 resident" in second  # a new kernel found the first three
    assert "memory work: 3 pages" in other


def told(kernel, sh, facts: int, days: int):
    """A conversation of one fact per turn (the benchmark's workload) over `days` days, with a
    pinned system prompt; returns the workload."""
    wl = bench_memory.make_workload(facts, 1, 4, seed=3)

    async def tell():
        await sh.mem.store(bench_memory.SYSTEM, role="system", pin=True)
        start = datetime(2023, 5, 8, 9).timestamp()
        for i, turn in enumerate(wl.turns):
            await sh.call("mem.store", text=turn, time=start + 86400 * (i * days // len(wl.turns)) + 60 * i)

    return wl, tell


def test_real_model_prompts_never_exceed_the_memory_budget(real_backend, tmp_path):
    """Everything in the prompt counts against the budget: the pages, the recalled marks and
    the dates, the separators, the chat template's frame of every message and of the reply."""

    async def body(kernel, sh):
        wl, tell = told(kernel, sh, 40, days=4)
        await tell()
        recorded = kernel.record_llm_calls()
        replies = [await sh.mem.chat(wl.facts[i].question, max_tokens=4, remember=False) for i in wl.asked[:3]]
        replies.append(await sh.mem.chat(wl.facts[wl.asked[3]].question, max_tokens=4))  # kept: the reply joins
        replies.append(await sh.mem.chat("And what else do you remember about them?", max_tokens=4))
        return replies, [list(ids) for ids, _ in recorded], await sh.mem.stat()

    budget = 300
    replies, prompts, st = run(real_backend, body, tmp_path, page_tokens=64, budget=budget)
    assert st.evicted_pages > 0 and st.faults > 0
    for reply, ids in zip(replies, prompts, strict=True):
        assert reply.usage.prompt_tokens == len(ids) <= budget
        assert len(ids) > 0.8 * budget  # the budget is used, not left empty to be safe
    text = real_backend.decode(prompts[0])
    assert RECALLED in text and "May 2023] " in text  # marks and dates are in it, and were counted
    assert st.resident_tokens <= budget


def test_real_model_second_turn_reuses_the_first_turns_prompt_from_kv(real_backend, tmp_path):
    """A conversation over a memory under pressure: each turn pages facts back in, and the next
    turn's prompt keeps the last one's prefix (the pinned pages, the working set and the pages
    that stay, in their places; what comes in is appended; what goes is taken from the end),
    which the engine reuses from the process's KV. A question on another subject needs other
    pages, so it reuses less: everything before the first page it replaced."""

    async def body(kernel, sh):
        wl, tell = told(kernel, sh, 60, days=1)
        await tell()
        recorded = kernel.record_llm_calls()
        a, b, c = (wl.facts[i] for i in wl.asked[:3])
        name = " ".join(a.statement.split(" ")[:2])
        first = await sh.mem.chat(a.question, max_tokens=8)
        second = await sh.mem.chat(f"Thanks. What else do you remember about {name}?", max_tokens=8)
        third = await sh.mem.chat(b.question, max_tokens=8, remember=False)
        fourth = await sh.mem.chat(c.question, max_tokens=8, remember=False)
        return [first, second, third, fourth], [list(ids) for ids, _ in recorded]

    replies, prompts = run(real_backend, body, tmp_path, page_tokens=64, budget=400)
    first, second, third, fourth = replies
    assert first.memory.faulted and third.memory.faulted and fourth.memory.faulted  # each paged its fact in
    assert second.usage.cached_tokens >= common_prefix(prompts[0], prompts[1])
    assert second.usage.cached_tokens >= 0.6 * first.usage.prompt_tokens  # most of it
    assert fourth.usage.cached_tokens >= common_prefix(prompts[2], prompts[3])
    assert fourth.usage.cached_tokens >= 0.4 * third.usage.prompt_tokens
