"""`llmos bench sched`: throughput, fairness and latency of the scheduler, against the baseline
of serving the same LLM calls one at a time with HF `generate`, measured in the same run.

For each N in --agents, N agents (distinct prompts) arrive a little apart, each holding a
conversation of --rounds turns of exactly --tokens tokens; every other agent blocks in a
syscall for --tool-seconds between turns (a tool call: it leaves the model and keeps its KV).

Figures per N: llmos_tok_s (generated tokens / wall time), baseline_tok_s (a sample of the same
recorded calls, each served alone by `generate`, tokens / summed time), speedup, jain_index
(over each agent's tokens per second of wanting the model, i.e. wall time minus its tool
time), ttft_p50_s and ttft_p99_s over all turns.
Records: `busy` (TTFT p50/p99 of fresh requests arriving while the largest N of agents are
decoding, to compare with `idle_ttft_s`), `resume` (time to first token for a 2,000-token context resumed from retained KV, vs
from a compressed copy, vs prefilled again), `nice` (shares of three always-busy agents with
nice 0, -3, -6 under the fair policy, expected 1:2:4), `idle_ttft_s`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import trio
from rich.console import Console
from rich.table import Table

from llmos.benchmarks.baseline import sequential_generate
from llmos.config import KernelConfig
from llmos.kernel.model.backend import Backend
from llmos.runtime import boot, session

AGENT = "llmos.benchmarks.sched_agent"
TOPICS = [
    "the history of the printing press", "how bees communicate", "the rules of chess", "volcanoes",
    "the invention of the telephone", "how bridges are built", "coral reefs", "the Roman empire",
    "how vaccines are made", "the water cycle", "black holes", "the first computers", "rainforests",
    "how airplanes fly", "the human immune system", "ancient Egypt", "solar panels", "jazz music",
    "glaciers", "the stock market", "dinosaurs", "the internet", "photosynthesis", "earthquakes",
    "the Olympic games", "honey bees", "electric cars", "the moon landing", "tea", "deserts",
    "submarines", "the periodic table", "origami", "lighthouses", "the Silk Road", "penguins",
]


def prompt_for(i: int) -> str:
    return f"Agent {i}: write a detailed essay about {TOPICS[i % len(TOPICS)]}."


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def jain(values: list[float]) -> float:
    if not values or not any(values):
        return 0.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


async def run_agents(backend: Backend, n: int, opts: argparse.Namespace) -> dict:
    config = KernelConfig(
        max_batch=opts.max_batch, quantum=opts.quantum, policy=opts.policy, prefill_first=opts.prefill_first
    )
    async with boot(config, backend) as kernel:
        recorded = kernel.record_llm_calls()
        sh = session(kernel, "bench")
        started = time.perf_counter()
        pids = {}
        for i in range(n):
            tool = opts.tool_seconds if i % 2 else 0.0
            pid = await sh.proc.spawn(AGENT, prompt_for(i), str(opts.rounds), str(opts.tokens), str(tool))
            pids[pid] = tool
            await trio.sleep(opts.arrival_gap)
        results = {}
        for _ in pids:
            status = await sh.proc.wait()
            if status.exit_code != 0:
                raise RuntimeError(f"bench agent {status.pid} failed: {status.reason}")
            results[status.pid] = status.result
        elapsed = time.perf_counter() - started
        calls = list(recorded)
    tokens = sum(r["tokens"] for r in results.values())
    rates = [r["tokens"] / (r["seconds"] - pids[pid] * (opts.rounds - 1)) for pid, r in results.items()]
    ttfts = [t for r in results.values() for t in r["ttfts"]]
    # The baseline's rate does not depend on N (one call at a time), so a spread sample of the
    # recorded calls measures it; replaying all 64 calls of N=32 would take minutes.
    step = max(1, len(calls) // opts.baseline_calls)
    sample = calls[::step][: opts.baseline_calls]
    base = await trio.to_thread.run_sync(sequential_generate, backend, sample)
    llmos_tok_s = tokens / elapsed
    return {
        "agents": n,
        "baseline_tok_s": round(base.tok_s, 2),
        "llmos_tok_s": round(llmos_tok_s, 2),
        "speedup": round(llmos_tok_s / base.tok_s, 2) if base.tok_s else None,
        "jain_index": round(jain(rates), 4),
        "ttft_p50_s": round(percentile(ttfts, 50), 4),
        "ttft_p99_s": round(percentile(ttfts, 99), 4),
        "tokens": tokens,
        "seconds": round(elapsed, 3),
        "baseline_calls": len(sample),
    }


async def resume_record(backend: Backend, context_tokens: int = 2000) -> dict:
    """TTFT of a follow-up turn on a long context: from retained KV, from a compressed copy,
    and after the cache was dropped (prefilled again)."""
    filler = " ".join(f"fact {i}: the {TOPICS[i % len(TOPICS)]} note." for i in range(400))
    ids = backend.encode(filler)[: context_tokens - 30]
    context = backend.decode(ids)
    figures = {}
    for mode in ("retained", "compressed", "dropped"):
        config = KernelConfig(kv_eviction="compress" if mode == "compressed" else "drop")
        async with boot(config, backend) as kernel:
            sh = session(kernel, "resume")
            msgs = [{"role": "user", "content": context}]
            first = await sh.llm.chat(msgs, max_tokens=1)
            msgs += [{"role": "assistant", "content": first.content}, {"role": "user", "content": "Go on."}]
            if mode != "retained":  # evict as the budget would: everything idle goes
                pool = kernel.engine.pool
                pool.budget_bytes, limit = 0, pool.budget_bytes
                pool.enforce(busy=set())
                pool.budget_bytes = limit
            reply = await sh.llm.chat(msgs, max_tokens=1)
            figures[mode] = reply.ttft
            figures["context_tokens"] = reply.usage.prompt_tokens
    return {
        "context_tokens": figures["context_tokens"],
        "resume_s": round(figures["retained"], 4),
        "restore_compressed_s": round(figures["compressed"], 4),
        "reprefill_s": round(figures["dropped"], 4),
        "ratio": round(figures["retained"] / figures["dropped"], 4),
    }


async def nice_record(backend: Backend, window: int) -> dict:
    """Three agents that always want the model, nice 0, -3, -6, under the fair policy with room
    for one in the batch: their token shares should be 1:2:4."""
    config = KernelConfig(policy="fair", max_batch=1, quantum=8)
    nices = (0, -3, -6)
    async with boot(config, backend) as kernel:
        procs = []

        async def hog(nice: int) -> None:
            sh = session(kernel, f"nice{nice}")
            await sh.proc.nice(nice)
            procs.append(kernel.procs.get(sh.pid))
            await sh.llm.chat(prompt_for(nice), max_tokens=window * 4, ignore_eos=True)

        async with trio.open_nursery() as nursery:
            for nice in nices:
                nursery.start_soon(hog, nice)
            while kernel.engine.stats.tokens_generated < 3 * 8:  # everyone has started
                await trio.sleep(0.01)
            start = {p.pid: p.generated_tokens for p in procs}
            base = kernel.engine.stats.tokens_generated
            while kernel.engine.stats.tokens_generated < base + window:
                await trio.sleep(0.01)
            got = {p.nice: p.generated_tokens - start[p.pid] for p in procs}
            nursery.cancel_scope.cancel()
    total = sum(got.values())
    weights = {0: 1, -3: 2, -6: 4}
    measured = {str(n): round(got[n] / total, 4) for n in nices}
    expected = {str(n): round(weights[n] / 7, 4) for n in nices}
    error = max(abs(got[n] / total - weights[n] / 7) / (weights[n] / 7) for n in nices)
    return {"nice": list(nices), "measured_share": measured, "expected_share": expected, "max_rel_error": round(error, 4)}


async def idle_ttft(backend: Backend) -> float:
    async with boot(KernelConfig(), backend) as kernel:
        times = []
        for i in range(3):
            sh = session(kernel, f"idle{i}")
            times.append((await sh.llm.chat(prompt_for(i), max_tokens=1)).ttft)
    return statistics.median(times)


async def busy_ttft(backend: Backend, busy: int, probes: int = 12, gap: float = 0.25) -> dict:
    """TTFT of requests that arrive while `busy` agents are decoding: one prober sends fresh
    one-token requests (no retained KV) at random moments, `gap` s apart on average. The batch
    has a seat for the probe, so this measures the scheduler's admission, not its quantum."""
    config = KernelConfig(max_batch=busy + 1)
    rng = random.Random(0)
    async with boot(config, backend) as kernel:
        stats = kernel.engine.stats

        async def hog(i: int) -> None:
            sh = session(kernel, f"busy{i}")
            await sh.llm.chat(prompt_for(i), max_tokens=4096, ignore_eos=True)

        times = []
        async with trio.open_nursery() as nursery:
            for i in range(busy):
                nursery.start_soon(hog, i)
            while not stats.batch_sizes or stats.batch_sizes[-1] < busy:  # everyone is decoding
                await trio.sleep(0.01)
            for i in range(probes):
                await trio.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
                sh = session(kernel, f"probe{i}")
                reply = await sh.llm.chat(prompt_for(busy + i), max_tokens=1)  # as idle_ttft asks
                times.append(reply.ttft)
            nursery.cancel_scope.cancel()
    return {"busy_agents": busy, "probes": probes, "ttft_p50_s": round(percentile(times, 50), 4), "ttft_p99_s": round(percentile(times, 99), 4)}


async def run_all(backend: Backend, opts: argparse.Namespace) -> dict:
    console = Console(stderr=True)
    report: dict = {
        "model": backend.name,
        "tokens_per_turn": opts.tokens,
        "rounds": opts.rounds,
        "tool_seconds": opts.tool_seconds,
        "max_batch": opts.max_batch,
        "policy": opts.policy,
        "prefill_first": opts.prefill_first,
        "runs": [],
    }
    report["idle_ttft_s"] = round(await idle_ttft(backend), 4)
    for n in opts.agents:
        console.print(f"[dim]N={n}…[/]")
        report["runs"].append(await run_agents(backend, n, opts))
    console.print("[dim]busy…[/]")
    report["busy"] = await busy_ttft(backend, max(opts.agents))
    console.print("[dim]resume…[/]")
    report["resume"] = await resume_record(backend)
    console.print("[dim]nice…[/]")
    report["nice"] = await nice_record(backend, opts.nice_window)
    return report


def print_report(report: dict, console: Console) -> None:
    table = Table(title=f"llmos bench sched — {report['model']}, {report['rounds']}×{report['tokens_per_turn']} tokens per agent")
    for col in ("agents", "baseline tok/s", "llmos tok/s", "speedup", "Jain", "TTFT p50 s", "TTFT p99 s"):
        table.add_column(col, justify="right")
    for r in report["runs"]:
        table.add_row(
            str(r["agents"]), f"{r['baseline_tok_s']:.1f}", f"{r['llmos_tok_s']:.1f}", f"{r['speedup']:.2f}x",
            f"{r['jain_index']:.3f}", f"{r['ttft_p50_s']:.3f}", f"{r['ttft_p99_s']:.3f}",
        )
    console.print(table)
    res, nice, busy = report["resume"], report["nice"], report["busy"]
    console.print(
        f"TTFT of a request arriving while {busy['busy_agents']} agents decode: p50 {busy['ttft_p50_s']:.3f} s, "
        f"p99 {busy['ttft_p99_s']:.3f} s ({busy['ttft_p99_s'] / report['idle_ttft_s']:.1f}x idle)"
    )
    console.print(
        f"idle TTFT {report['idle_ttft_s']:.3f} s · resume {res['context_tokens']}-token context: "
        f"retained KV {res['resume_s']:.3f} s, compressed copy {res['restore_compressed_s']:.3f} s, "
        f"prefill again {res['reprefill_s']:.3f} s (ratio {res['ratio']:.3f})"
    )
    console.print(
        f"nice {nice['nice']}: measured {nice['measured_share']} vs expected {nice['expected_share']} "
        f"(max relative error {nice['max_rel_error']:.1%})"
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["agents"] for r in report["runs"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ns, [r["llmos_tok_s"] for r in report["runs"]], "o-", label="llmos (continuous batching)")
    ax.plot(ns, [r["baseline_tok_s"] for r in report["runs"]], "s--", label="HF generate, one call at a time")
    ax.set_xlabel("agents")
    ax.set_ylabel("generated tokens / s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_title(f"llmos bench sched ({report['model']})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmos bench sched", description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", default="1,4,16,32", help="comma-separated agent counts")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per turn")
    p.add_argument("--rounds", type=int, default=2, help="turns per agent")
    p.add_argument("--tool-seconds", type=float, default=0.3, help="time every other agent blocks between turns")
    p.add_argument("--arrival-gap", type=float, default=0.02, help="seconds between agent arrivals")
    p.add_argument("--baseline-calls", type=int, default=6, help="recorded calls replayed by the baseline per N")
    p.add_argument("--nice-window", type=int, default=280, help="tokens over which nice shares are measured")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--quantum", type=int, default=32)
    p.add_argument("--policy", default="rr")
    p.add_argument("--no-prefill-first", dest="prefill_first", action="store_false", help="mix newcomers' prefill into decode steps")
    p.add_argument("--model", default=None)
    p.add_argument("--json", default="bench-results/sched.json", help="where to write the figures")
    p.add_argument("--plot", default="bench-results/sched.png", help="where to draw tok/s against N")
    opts = p.parse_args(argv)
    opts.agents = [int(x) for x in opts.agents.split(",") if x]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv or [])
    console = Console()
    config = KernelConfig()
    backend = Backend.load(opts.model or config.model, config.weights, config.threads, config.device)
    report = trio.run(run_all, backend, opts)
    print_report(report, console)
    for path, write in ((opts.json, lambda p: p.write_text(json.dumps(report, indent=2))), (opts.plot, lambda p: plot(report, p))):
        if path:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
            console.print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
