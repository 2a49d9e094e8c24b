"""Load on the daemon: N clients at once, each connecting over the socket and running an agent.

    python -m llmos.benchmarks.daemon_load --clients 64 --max-tokens 32 --rounds 2

Starts `llmos daemon` in its own process (own data dir, no HTTP) unless --socket names a
running one. Each client opens a connection (a session process), runs a small agent through
the remote SDK (one streamed llm.chat, one log line) and disconnects. Reports agents/s,
generated tokens/s, latency per agent (connect to result: p50, p99, max) and the daemon's
RSS (after warm-up, peak under load, after each round), as a table and optionally JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

QUESTIONS = [
    "What is an operating system?", "What is a compiler?", "How does a hash table work?", "What is TCP?",
    "What is a process?", "Why is the sky blue?", "What is DNA?", "What is recursion?",
]


@dataclass
class LoadResult:
    clients: int
    rounds: int
    max_tokens: int
    completed: int
    failed: list[str]
    wall_s: float
    agents_per_s: float
    tokens: int
    tokens_per_s: float
    latency_min_s: float
    latency_p50_s: float
    latency_p99_s: float
    latency_max_s: float
    rss_base_mb: float
    rss_peak_mb: float
    rss_after_round_mb: list[float] = field(default_factory=list)


async def agent(sys, question: str, max_tokens: int) -> int:
    """The agent each client runs: a streamed answer and a log line; returns tokens generated."""
    pieces: list[str] = []
    reply = await sys.llm.chat(question, max_tokens=max_tokens, on_text=pieces.append)
    await sys.log(f"answered {question!r} in {reply.usage.completion_tokens} tokens")
    assert "".join(pieces) == reply.content
    return reply.usage.completion_tokens


async def run_load(socket: Path, token: str, daemon_pid: int, clients: int, max_tokens: int, rounds: int = 1) -> LoadResult:
    import psutil

    import llmos

    proc = psutil.Process(daemon_pid)
    latencies: list[float] = []
    failed: list[str] = []
    tokens = 0
    peak = 0.0

    async def one(i: int) -> None:
        nonlocal tokens
        started = time.monotonic()
        try:
            async with llmos.connect(socket, token, name=f"load-{i}") as sys:
                generated = await agent(sys, QUESTIONS[i % len(QUESTIONS)], max_tokens)
            tokens += generated
        except Exception as exc:  # counted, not raised: the report says how many failed
            failed.append(f"client {i}: {type(exc).__name__}: {exc}")
            return
        latencies.append(time.monotonic() - started)

    async def sample_rss(stop: trio.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss / 2**20)
            with trio.move_on_after(0.1):
                await stop.wait()

    async with llmos.connect(socket, token, name="warm-up") as sys:  # first-call costs out of the way
        await agent(sys, QUESTIONS[0], max_tokens)
    base = proc.memory_info().rss / 2**20
    after: list[float] = []
    started = time.monotonic()
    for _ in range(rounds):
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_rss, stop)
            async with trio.open_nursery() as clients_nursery:
                for i in range(clients):
                    clients_nursery.start_soon(one, i)
            stop.set()
        after.append(proc.memory_info().rss / 2**20)
    wall = time.monotonic() - started
    latencies.sort()
    return LoadResult(
        clients=clients, rounds=rounds, max_tokens=max_tokens, completed=len(latencies), failed=failed,
        wall_s=round(wall, 2), agents_per_s=round(len(latencies) / wall, 2), tokens=tokens,
        tokens_per_s=round(tokens / wall, 1), latency_min_s=round(latencies[0] if latencies else 0, 2), latency_p50_s=round(_quantile(latencies, 0.5), 2),
        latency_p99_s=round(_quantile(latencies, 0.99), 2), latency_max_s=round(latencies[-1] if latencies else 0, 2),
        rss_base_mb=round(base), rss_peak_mb=round(peak), rss_after_round_mb=[round(a) for a in after],
    )


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def start_daemon(home: Path, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ, LLMOS_HOME=str(home), HF_HUB_OFFLINE="1")
    daemon = subprocess.Popen([sys.executable, "-m", "llmos", "daemon", "--no-http", *extra], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"daemon exited {daemon.returncode}")
        try:
            if json.loads((home / "daemon.json").read_text()).get("pid") == daemon.pid:
                return daemon
        except (OSError, ValueError):
            time.sleep(0.1)
    daemon.kill()
    raise RuntimeError("daemon did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llmos.benchmarks.daemon_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--socket", type=Path, help="a running daemon's socket (LLMOS_TOKEN or its data dir gives the token)")
    p.add_argument("--daemon-args", default="", help="extra `llmos daemon` arguments, e.g. '--max-batch 64'")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    daemon = None
    if args.socket:
        from llmos.agents.remote import daemon_token

        socket, token = args.socket, daemon_token()
        pid = json.loads((args.socket.parent / "daemon.json").read_text())["pid"]
    else:
        home = Path(tempfile.mkdtemp(prefix="llmos-load-", dir="/tmp"))
        daemon = start_daemon(home, args.daemon_args.split())
        socket, token, pid = home / "daemon.sock", (home / "daemon.token").read_text().strip(), daemon.pid
    try:
        result = trio.run(run_load, socket, token, pid, args.clients, args.max_tokens, args.rounds)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    table = Table(title=f"llmos daemon under load: {args.clients} clients x {args.rounds} round(s)", box=None)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in asdict(result).items():
        if key != "failed":
            table.add_row(key, str(value))
    table.add_row("failed", str(len(result.failed)))
    Console().print(table)
    for line in result.failed[:10]:
        print(line, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())
