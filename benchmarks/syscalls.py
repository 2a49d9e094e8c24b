"""Syscall benchmark: what the single door costs, and how fast the knowledge base answers.

    llmos bench syscalls                       # 20,000 no-op calls; kb.search over 1,000 chunks
    llmos bench syscalls --calls 2000 --chunks 1000 --queries 20 --json out.json

1. Dispatch overhead: a no-op tool made with `@tool` (async, and sync: the thread hop), and
   `proc.getpid`, called from a session through the SDK, as an in-process agent would: lookup,
   validation, capability and quota checks, the handler, the audit-log line. Then the same
   from an agent worker (its own OS process), timed by the program: the round trip over its
   channel, JSON both ways. Microseconds per call, p50 / p99. The audit record alone is timed
   too, being a file write.
2. kb.search: 1,000 chunks of real text (docstrings of the Python standard library, read from
   its source files, never imported) ingested through kb.ingest into a fresh chromadb, then
   queries by meaning through kb.search (query embedding + vector search), p50 / p99 ms.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import trio
from rich.console import Console
from rich.table import Table

from llmos.kernel.kb import CHUNK_CHARS, KnowledgeBase, chunk_text
from llmos.kernel.memory.vectorstore import open_client
from llmos.kernel.state.audit import AuditLog
from llmos.syscalls.tools import tool

QUERIES = [
    "parse command line arguments",
    "compress data with gzip",
    "read and write CSV files",
    "run a function in another thread",
    "format a date as a string",
    "match text with regular expressions",
    "send an HTTP request",
    "copy a directory tree",
    "serialize objects to JSON",
    "generate random numbers",
    "measure how long code takes to run",
    "temporary files and folders",
]


@tool("bench.noop")
async def noop() -> None:
    """Does nothing (dispatch overhead benchmark)."""


@tool("bench.noop_sync")
def noop_sync() -> None:
    """Does nothing, in a worker thread (dispatch overhead benchmark)."""


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "mean": statistics.fmean(ordered), "n": len(ordered)}


async def time_calls(sh, name: str, calls: int) -> dict[str, float]:
    for _ in range(min(200, calls)):  # warm up
        await sh.call(name)
    samples = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        await sh.call(name)
        samples.append((time.perf_counter_ns() - t) / 1000)
    return percentiles(samples)


async def time_in_worker(sh, name: str, calls: int) -> dict[str, float]:
    """The round trip as an agent in a worker sees it (timed in the worker)."""
    pid = await sh.proc.spawn(str(Path(__file__).with_name("roundtrip_agent.py")), name, str(calls))
    status = await sh.proc.wait(pid)
    if status.exit_code != 0:
        raise RuntimeError(f"the round-trip agent failed: {status.reason}")
    return percentiles(status.result)


def stdlib_chunks(n: int) -> list[tuple[str, str]]:
    """`n` chunks of docstrings from the standard library's sources, in a fixed order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    for path in sorted(lib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        parts = [f"# {path.stem}\n\n{ast.get_docstring(tree) or ''}"]
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and (doc := ast.get_docstring(node)):
                parts.append(f"## {node.name}\n\n{doc}")
        for chunk in chunk_text("\n\n".join(parts), path.stem, CHUNK_CHARS):
            out.append((f"{path.stem}#{chunk.index}", chunk.text))
            if len(out) == n:
                return out
    return out


async def bench(calls: int, chunks: int, queries: int) -> dict:
    from llmos.runtime import boot, session

    results: dict = {}
    async with boot() as kernel:
        scratch = tempfile.TemporaryDirectory(prefix="llmos-bench-")
        kernel.audit = AuditLog(Path(scratch.name) / "audit.jsonl")  # a real log, not the user's
        sh = session(kernel, "bench")
        results["dispatch_us"] = {
            "bench.noop (async tool)": await time_calls(sh, "bench.noop", calls),
            "bench.noop_sync (sync tool)": await time_calls(sh, "bench.noop_sync", max(1, calls // 4)),
            "proc.getpid (plain syscall)": await time_calls(sh, "proc.getpid", calls),
            "bench.noop from a worker": await time_in_worker(sh, "bench.noop", calls),
            "proc.getpid from a worker": await time_in_worker(sh, "proc.getpid", calls),
        }
        samples = []
        for i in range(min(calls, 5000)):
            t = time.perf_counter_ns()
            kernel.audit.record(sh.pid, "bench.noop", {}, "OK", 0.0)
            samples.append((time.perf_counter_ns() - t) / 1000)
        results["audit_record_us"] = percentiles(samples)

        with scratch:
            kernel.kb = KnowledgeBase(client_factory=lambda: open_client(path=Path(scratch.name) / "chroma"))
            docs = stdlib_chunks(chunks)
            started = time.perf_counter()
            for i in range(0, len(docs), 250):
                batch = [{"source": s, "text": t} for s, t in docs[i : i + 250]]
                await sh.call("kb.ingest", texts=batch, collection="bench")
            ingest_s = time.perf_counter() - started
            stored = (await sh.call("kb.list")).collections["bench"]
            await sh.call("kb.search", query="warm up", collection="bench")
            samples = []
            for i in range(queries):
                t = time.perf_counter_ns()
                await sh.call("kb.search", query=QUERIES[i % len(QUERIES)], k=5, collection="bench")
                samples.append((time.perf_counter_ns() - t) / 1e6)
            results["kb"] = {
                "chunks": stored,
                "ingest_seconds": round(ingest_s, 2),
                "ingest_chunks_per_s": round(stored / ingest_s, 1),
                "search_ms": percentiles(samples),
            }
    return results


def render(results: dict, console: Console) -> None:
    table = Table(title="syscall round trip (µs per call: from a session through the SDK, in-process; "
                        "'from a worker': timed by a program in its own process, over its channel)")
    for col in ("syscall", "calls", "p50 µs", "p99 µs", "mean µs"):
        table.add_column(col, justify="left" if col == "syscall" else "right")
    for name, r in results["dispatch_us"].items():
        table.add_row(name, str(r["n"]), f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['mean']:.1f}")
    a = results["audit_record_us"]
    table.add_row("  of which: audit record", str(a["n"]), f"{a['p50']:.1f}", f"{a['p99']:.1f}", f"{a['mean']:.1f}")
    console.print(table)
    kb = results["kb"]
    t2 = Table(title=f"kb.search over {kb['chunks']} chunks (all-MiniLM-L6-v2 + chromadb)")
    for col in ("queries", "p50 ms", "p99 ms", "mean ms", "ingest s", "ingest chunks/s"):
        t2.add_column(col, justify="right")
    s = kb["search_ms"]
    t2.add_row(str(s["n"]), f"{s['p50']:.1f}", f"{s['p99']:.1f}", f"{s['mean']:.1f}", str(kb["ingest_seconds"]), str(kb["ingest_chunks_per_s"]))
    console.print(t2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmos bench syscalls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="no-op calls to time (default 20000)")
    parser.add_argument("--chunks", type=int, default=1000, help="chunks in the knowledge base (default 1000)")
    parser.add_argument("--queries", type=int, default=100, help="kb.search calls to time (default 100)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = trio.run(bench, args.calls, args.chunks, args.queries)
    results["machine"] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    render(results, Console())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
