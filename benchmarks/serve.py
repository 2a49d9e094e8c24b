"""`llmos bench serve --url URL`: agents over the OpenAI HTTP API, against any compatible server
(an llmos daemon, llama.cpp's llama-server, vLLM, Ollama), so servers compare on one machine.

For each N in --agents, N agents start at once. Each agent: its own question -> --tokens
tokens; every other agent then pauses --pause seconds (a tool call); then its reply and a
follow-up go back in -> --tokens more tokens. Greedy (temperature 0), `ignore_eos` (so every
turn generates exactly --tokens tokens), streamed.

Figures per N: tok_s (completion tokens of all turns / wall time from the first request to
the last token), TTFT p50 and p99 of the first turns and of the second turns (request sent to
first content token), and failed requests. Each N runs --repeat times; the table shows the run
with the median tok/s, the JSON has every run. `--merge A.json B.json ...` prints runs of
several servers side by side and plots them together (tok/s and TTFT p99 against N).

    llmos bench serve --url http://127.0.0.1:8470/v1 --api-key TOKEN --label llmos --json llmos.json
    llmos bench serve --url http://127.0.0.1:8091/v1 --label llama.cpp --json llama.json
    llmos bench serve --merge llmos.json llama.json --plot serve.png
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from rich.console import Console
from rich.table import Table

QUESTIONS = [
    "What is an operating system?", "How does a hash table work?", "Why is the sky blue?", "What is TCP?",
    "How do vaccines work?", "What causes earthquakes?", "How does a compiler work?", "What is photosynthesis?",
    "Why do we have seasons?", "How do airplanes fly?", "What is a black hole?", "How does the internet work?",
    "What is inflation?", "How do bees make honey?", "What is machine learning?", "Why is the ocean salty?",
    "How does a battery work?", "What is DNA?", "How do volcanoes form?", "What is a prime number?",
    "How does GPS work?", "Why do cats purr?", "What is the water cycle?", "How do solar panels work?",
    "What is recursion?", "How does the heart pump blood?", "What is a database index?", "Why do leaves change colour?",
    "How do submarines dive?", "What is gravity?", "How does encryption work?", "What is the Silk Road?",
]
FOLLOW_UP = "Now explain that again, more simply, for a ten-year-old."


@dataclass
class Turn:
    ttft: float | None  # seconds from sending the request to the first content token
    seconds: float
    tokens: int
    error: str | None = None


@dataclass
class Run:
    agents: int
    wall_s: float
    tokens: int
    tok_s: float
    ttft1_p50_s: float
    ttft1_p99_s: float
    ttft2_p50_s: float
    ttft2_p99_s: float
    failed: int
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q / 100 * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Server:
    """One OpenAI-compatible endpoint, spoken to with httpx (streamed chat completions)."""

    def __init__(self, url: str, api_key: str | None, model: str | None, max_connections: int) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(headers=headers, limits=limits, timeout=httpx.Timeout(600.0))
        self.model = model

    async def __aenter__(self) -> "Server":
        if self.model is None:
            response = await self.client.get(f"{self.url}/models")
            response.raise_for_status()
            self.model = response.json()["data"][0]["id"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def chat(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, Turn]:
        body = {
            "model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        ttft: float | None = None
        pieces: list[str] = []
        chunks = 0
        usage_tokens: int | None = None
        try:
            async with self.client.stream("POST", f"{self.url}/chat/completions", json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")[:200]
                    return "", Turn(None, time.perf_counter() - started, 0, f"HTTP {response.status_code}: {text}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if event.get("usage"):
                        usage_tokens = event["usage"].get("completion_tokens", usage_tokens)
                    for choice in event.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            if ttft is None:
                                ttft = time.perf_counter() - started
                            pieces.append(content)
                            chunks += 1
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            return "".join(pieces), Turn(ttft, time.perf_counter() - started, chunks, f"{type(exc).__name__}: {exc}")
        tokens = usage_tokens if usage_tokens is not None else chunks
        return "".join(pieces), Turn(ttft, time.perf_counter() - started, tokens)


async def agent(server: Server, i: int, tokens: int, pause: float, turns: list[list[Turn]]) -> None:
    question = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
    reply, first = await server.chat(question, tokens)
    turns[0].append(first)
    if first.error is not None:
        return
    if i % 2 == 1:
        await trio.sleep(pause)  # a tool call between the turns
    follow = question + [{"role": "assistant", "content": reply}, {"role": "user", "content": FOLLOW_UP}]
    _, second = await server.chat(follow, tokens)
    turns[1].append(second)


async def run_once(server: Server, agents: int, tokens: int, pause: float) -> Run:
    turns: list[list[Turn]] = [[], []]
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(agents):
            nursery.start_soon(agent, server, i, tokens, pause, turns)
    wall = time.perf_counter() - started
    everything = turns[0] + turns[1]
    total = sum(t.tokens for t in everything)
    errors = [t.error for t in everything if t.error is not None]
    ttft = [[t.ttft for t in ts if t.ttft is not None and t.error is None] for ts in turns]
    return Run(
        agents=agents, wall_s=round(wall, 3), tokens=total, tok_s=round(total / wall, 2),
        ttft1_p50_s=round(percentile(ttft[0], 50), 4), ttft1_p99_s=round(percentile(ttft[0], 99), 4),
        ttft2_p50_s=round(percentile(ttft[1], 50), 4), ttft2_p99_s=round(percentile(ttft[1], 99), 4),
        failed=len(errors), errors=errors[:5],
    )


async def run_all(opts: argparse.Namespace) -> dict[str, Any]:
    async with Server(opts.url, opts.api_key, opts.model, max(opts.agents) + 4) as server:
        _, warm = await server.chat([{"role": "user", "content": "Hello!"}], 8)  # load, caches, first-call costs
        if warm.error is not None:
            raise SystemExit(f"bench serve: {opts.url} did not answer a chat completion: {warm.error}")
        runs: list[dict[str, Any]] = []
        for n in opts.agents:
            for _ in range(opts.repeat):
                runs.append(asdict(await run_once(server, n, opts.tokens, opts.pause)))
                await trio.sleep(opts.settle)
        return {
            "label": opts.label or opts.url, "url": opts.url, "model": server.model, "tokens": opts.tokens,
            "pause_s": opts.pause, "repeat": opts.repeat, "runs": runs,
        }


def median_runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per N, the run with the median tok/s (the lower middle one for an even count)."""
    by_n: dict[int, list[dict[str, Any]]] = {}
    for run in report["runs"]:
        by_n.setdefault(run["agents"], []).append(run)
    chosen = []
    for n in sorted(by_n):
        ordered = sorted(by_n[n], key=lambda r: r["tok_s"])
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def print_reports(reports: list[dict[str, Any]], console: Console) -> None:
    table = Table(title=f"bench serve: N agents, 2 turns x {reports[0]['tokens']} tokens each, streamed, greedy")
    for col in ("server", "agents", "tok/s", "tok/s range", "TTFT1 p50", "TTFT1 p99", "TTFT2 p50", "TTFT2 p99", "failed"):
        table.add_column(col, justify="left" if col == "server" else "right")
    for report in reports:
        for run in median_runs(report):
            rates = [r["tok_s"] for r in report["runs"] if r["agents"] == run["agents"]]
            table.add_row(
                report["label"], str(run["agents"]), f"{run['tok_s']:.1f}", f"{min(rates):.0f}-{max(rates):.0f}",
                *(f"{run[k]:.3f}s" for k in ("ttft1_p50_s", "ttft1_p99_s", "ttft2_p50_s", "ttft2_p99_s")),
                str(run["failed"]),
            )
    console.print(table)


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    for report in reports:
        runs = median_runs(report)
        ns = [r["agents"] for r in runs]
        rate.plot(ns, [r["tok_s"] for r in runs], marker="o", label=report["label"])
        ttft.plot(ns, [r["ttft2_p99_s"] for r in runs], marker="o", label=f"{report['label']} (2nd turn)")
        ttft.plot(ns, [r["ttft1_p99_s"] for r in runs], marker="x", linestyle="--", label=f"{report['label']} (1st turn)")
    rate.set(xlabel="agents at once", ylabel="generated tokens / s", title="throughput", xscale="log")
    ttft.set(xlabel="agents at once", ylabel="seconds", title="time to first token, p99", xscale="log")
    for ax in (rate, ttft):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmos bench serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="the server's OpenAI API base, e.g. http://127.0.0.1:8470/v1")
    p.add_argument("--api-key", help="sent as a bearer token (an llmos daemon's token is in its info file)")
    p.add_argument("--model", help="model id to ask for (default: the first of /models)")
    p.add_argument("--label", help="name of this server in tables and plots (default: the URL)")
    p.add_argument("--agents", default="1,8,32", help="comma-separated agent counts (default 1,8,32)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per turn (default 64)")
    p.add_argument("--pause", type=float, default=0.3, help="seconds every other agent pauses between turns (0.3)")
    p.add_argument("--repeat", type=int, default=1, help="runs per agent count; the table shows the median (1)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between runs (1)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plot", help="write a PNG plot here")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="compare earlier reports instead of running")
    opts = p.parse_args(argv)
    if not opts.url and not opts.merge:
        p.error("give --url (run against a server) or --merge (compare reports)")
    opts.agents = [int(n) for n in opts.agents.split(",") if n.strip()]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv or [])
    console = Console(width=max(120, Console().width))
    if opts.merge:
        reports = [json.loads(Path(path).read_text()) for path in opts.merge]
    else:
        reports = [trio.run(run_all, opts)]
        if opts.json:
            Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
            Path(opts.json).write_text(json.dumps(reports[0], indent=2))
            console.print(f"wrote {opts.json}")
    print_reports(reports, console)
    if opts.plot:
        Path(opts.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(reports, Path(opts.plot))
        console.print(f"wrote {opts.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
