"""Paged memory on the real model: a fact evicted early comes back through a page fault and
the model answers from it; KV is rebuilt only from the first changed page; the benchmark runs
end to end (a short version)."""

from __future__ import annotations

import os
import subprocess
import sys

import trio
from conftest import kernel_with
from rich.console import Console
from test_memory import common_prefix, fill, with_memory

from llmos.benchmarks import memory as bench_memory
from llmos.kernel.memory.manager import RECALLED
from llmos.runtime import session

SYSTEM = "You are a helpful assistant. Answer in a few words."
FACT = "Maria Okafor plays the cello."


def run(backend, fn, path, **fields):
    async def main():
        async with kernel_with(backend) as kernel:
            with_memory(kernel, path, **fields)
            return await fn(kernel, session(kernel, "test"))

    return trio.run(main)


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
        await sh.mem.budget((await sh.mem.stat()).resident_tokens - 5)  # the oldest pages must go
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
    assert row["kernel"]["fault_p99_ms"] > 0 and row["kernel"]["page_out_p99_ms"] > 0
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
