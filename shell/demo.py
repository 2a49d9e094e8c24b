"""`llmos demo`: several agents at once on the one local model, streamed live.

Default: the three bundled examples (a chat, a summarizer and a fan-out with three children)
run concurrently. `--agents N`: N question-answering agents, for measuring throughput.
`--baseline`: afterwards, replay every LLM call the agents made with HF `generate`, one call at
a time, and report both figures from the same run.

A client of the syscall API: the kernel comes from the `Boot` that cli.py passes in
(shell/local.py); the agents are spawned, reaped and watched through a session's `Sys`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import trio
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from llmos.abi.log import LogEvent
from llmos.shell.local import Boot

QUESTIONS = [
    "What is an operating system?", "Why do computers use binary?", "What is a compiler?",
    "How does a hash table work?", "What is TCP?", "What is a process?", "Why is the sky blue?",
    "What is photosynthesis?", "How do vaccines work?", "What is inflation in economics?",
    "What is a black hole?", "How does a refrigerator keep food cold?", "What is machine learning?",
    "Why do leaves change color in autumn?", "What is the water cycle?", "How does GPS find a location?",
    "What is a prime number?", "Why do we have seasons?", "What is DNA?", "How does a battery store energy?",
    "What is a database index?", "What causes earthquakes?", "What is the speed of light?",
    "How do airplanes fly?", "What is recursion?", "Why is the ocean salty?", "What is an API?",
    "How does the heart pump blood?", "What is a virtual machine?", "What is encryption?",
    "Why do cats purr?", "What is a neural network?",
]

SAMPLE_TEXT = """Early computers ran one program at a time. An operator loaded a job, waited for it to finish, and loaded the next. Expensive machines sat idle while programs waited for tape drives and printers.

Batch systems and then time-sharing changed that. A small program, the kernel, took control of the machine and gave each user's program a slice of processor time in turn. When one program waited for input or output, another ran. Users at terminals felt they had the machine to themselves.

The kernel also took charge of memory. With virtual memory each program sees its own address space; pages that have not been used recently move to disk and come back when touched. Programs ask the kernel for services through system calls, which check what each program is allowed to do.
"""

TAIL_CHARS = 600


class LiveView:
    """A panel per process with the tail of what it is generating and logging."""

    def __init__(self) -> None:
        self.text: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.status: dict[int, str] = {}

    def feed(self, event: LogEvent) -> None:
        pid = event.pid
        if event.kind == "spawn":
            self.names[pid] = event.text.split(" ", 1)[0]
            self.text.setdefault(pid, "")
            self.status[pid] = "running"
        elif event.kind == "text" and pid in self.text:
            self.text[pid] = (self.text[pid] + event.text)[-TAIL_CHARS:]
        elif event.kind == "exit" and pid in self.text:
            self.status[pid] = event.text

    def render(self) -> Table:
        cols = 2 if len(self.text) <= 4 else 3 if len(self.text) <= 9 else 4
        grid = Table.grid(expand=True)
        for _ in range(cols):
            grid.add_column(ratio=1)
        panels = []
        for pid, text in self.text.items():
            lines = text.strip().splitlines()[-6:]
            title = f"pid {pid} {escape(self.names.get(pid, ''))}"
            style = "green" if self.status[pid].startswith("exit 0") else "red" if "exit" in self.status[pid] else "cyan"
            panels.append(Panel(Text("\n".join(lines)), title=title, subtitle=self.status[pid][:30], height=9, border_style=style))
        for i in range(0, len(panels), cols):
            row = panels[i : i + cols]
            grid.add_row(*row, *([""] * (cols - len(row))))
        return grid


async def demo(boot: Boot, args: argparse.Namespace) -> int:
    console = Console()
    console.print("[bold]llmos demo[/]: loading the model…")
    workdir = Path(tempfile.mkdtemp(prefix="llmos-demo-"))
    (workdir / "history.txt").write_text(SAMPLE_TEXT)
    async with boot() as kernel:
        recorded = kernel.record_llm_calls() if args.baseline else []
        sh = kernel.session("demo", fs_root=workdir)
        view = LiveView()
        with kernel.watch() as events:
            started = time.perf_counter()
            pids = await _spawn_agents(sh, args)
            results = []

            async def reap() -> None:
                for _ in pids:
                    results.append(await sh.proc.wait())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reap)
                if args.plain:
                    await _drain(events, view, lambda: len(results) == len(pids))
                else:
                    with Live(view.render(), console=console, refresh_per_second=6, transient=False) as live:

                        async def repaint() -> None:
                            while len(results) < len(pids):
                                live.update(view.render())
                                await trio.sleep(0.15)
                            live.update(view.render())

                        nursery.start_soon(repaint)
                        await _drain(events, view, lambda: len(results) == len(pids))
            elapsed = time.perf_counter() - started
        stat = await sh.stat()
        figures = {
            "agents": len(pids),
            "processes": len(view.text),
            "tokens_generated": stat.tokens_generated,
            "seconds": round(elapsed, 3),
            "llmos_tok_s": round(stat.tokens_generated / elapsed, 2),
        }
        _print_results(console, results)
        if args.baseline:
            console.print(f"replaying {len(recorded)} LLM calls with HF generate, one at a time…")
            base = await kernel.replay_baseline(recorded)
            figures.update(
                baseline_tokens=base.tokens,
                baseline_seconds=round(base.seconds, 3),
                baseline_tok_s=round(base.tok_s, 2),
                speedup=round(figures["llmos_tok_s"] / base.tok_s, 2) if base.tok_s else None,
            )
    _print_figures(console, figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    failed = [r for r in results if r.exit_code != 0]
    return 1 if failed else 0


async def _spawn_agents(sh, args: argparse.Namespace) -> list[int]:
    if args.agents > 0:
        return [
            await sh.proc.spawn("answer", QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})"))
            for i in range(args.agents)
        ]
    return [
        await sh.proc.spawn("chat", "Why do computers need an operating system?"),
        await sh.proc.spawn("summarize", "history.txt"),
        await sh.proc.spawn("fanout"),
    ]


async def _drain(events, view: LiveView, done) -> None:
    while not done():
        with trio.move_on_after(0.2):
            async for event in events:
                view.feed(event)
                if done():
                    break


def _print_results(console: Console, results) -> None:
    table = Table(title="results", box=None, header_style="bold")
    for col in ("PID", "NAME", "EXIT", "RESULT"):
        table.add_column(col, overflow="fold")
    for r in sorted(results, key=lambda r: r.pid):
        body = r.result if r.exit_code == 0 else r.reason.splitlines()[-1]
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        table.add_row(str(r.pid), escape(r.name), str(r.exit_code), escape(text[:300]))
    console.print(table)


def _print_figures(console: Console, figures: dict) -> None:
    table = Table(title="throughput (same run)", box=None, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, str(value))
    console.print(table)
