"""`llmos shell`: an interactive prompt over the syscall API.

The shell is a session process: every command is a syscall made on its behalf, so it can do
exactly what an agent with full capabilities could, and nothing behind the kernel's back.
It talks to the running daemon (the same commands, over the daemon's socket) and says which
one and how it found it; with --local it runs on a kernel of its own instead. Without a daemon
and without --local it says so and stops, rather than quietly booting a kernel nobody else sees.

A client of the syscall API only: it holds a `Sys` handle, never a kernel object, and imports
the ABI, the SDK and llmos.config (an import-linter contract in pyproject.toml). The --local
kernel is booted by shell/boot.py and handed in by cli.py as a `Boot` (shell/local.py).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys as _sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.mem import MemStat, Why
from llmos.abi.proc import ProcInfo
from llmos.agents.remote import DaemonUnavailable, connect, daemon_listening, socket_path
from llmos.agents.sdk import Sys
from llmos.config import data_dir
from llmos.shell.local import Boot
from llmos.shell.run import render_event


class UsageError(Exception):
    pass


@dataclass
class Command:
    usage: str
    help: str
    run: Callable[[list[str]], Awaitable[None]]
    raw: bool = False  # gets the rest of the line as typed (one string), not shell-split words


class Lines:
    """Lines typed at the terminal, read in a worker thread. A read that is cancelled (attach
    ending) is not lost: its line goes to the next reader."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.pending: trio.MemoryReceiveChannel[str | None] | None = None
        self.history: list[str] = []

    async def read(self, prompt: str = "") -> str | None:
        if self.pending is None:
            send, self.pending = trio.open_memory_channel[str | None](1)
            self.nursery.start_soon(self._read, prompt, send)
        line = await self.pending.receive()
        self.pending = None
        if line is not None and line.strip():
            self.history.append(line)
        return line

    async def _read(self, prompt: str, send: trio.MemorySendChannel[str | None]) -> None:
        async with send:
            await send.send(await trio.to_thread.run_sync(_read_line, prompt, abandon_on_cancel=True))


class Shell:
    def __init__(self, sys: Sys, console: Console, lines: Lines | None = None, where: str = "") -> None:
        self.sys = sys
        self.console = console
        self.lines = lines
        self.where = where  # which kernel this shell talks to, and how it found it
        self.commands: dict[str, Command] = {
            "spawn": Command("spawn PROGRAM [ARGS...]", "start an agent program in the background", self.spawn),
            "ps": Command("ps [-a]", "list processes (-a: with exit reasons)", self.ps),
            "top": Command("top [-n N] [-d SECONDS]", "live process view (Ctrl-C ends it; -n: N refreshes)", self.top),
            "kill": Command("kill PID", "kill a process", self.kill),
            "stop": Command("stop PID", "stop a process (no progress, KV kept) until cont", self.stop),
            "cont": Command("cont PID", "continue a stopped process (a restored one starts again)", self.cont),
            "wait": Command("wait [PID]", "wait for a child to exit and show its result", self.wait),
            "nice": Command("nice PID VALUE", "set a process's nice value (-20..19)", self.nice),
            "logs": Command("logs [-f] PID", "show a process's log (-f: follow until it exits)", self.logs),
            "attach": Command("attach PID", "follow a process; lines you type go to its mailbox (Ctrl-D leaves)", self.attach),
            "mem": Command("mem PID", "a process's memory: page table, faults, evictions", self.mem),
            "history": Command("history", "commands typed before", self.history),
            "tools": Command("tools [PATTERN...]", "the tools (syscalls) you may use, with their arguments", self.tools),
            "mount": Command("mount PREFIX COMMAND [ARGS...]", "mount a stdio MCP server's tools as PREFIX.*", self.mount),
            "umount": Command("umount PREFIX", "unmount an MCP server", self.umount),
            "send": Command("send [--json] PID MESSAGE", "put a message in a process's mailbox: the rest of the line "
                            "as text, or with --json as the JSON value it spells", self.send, raw=True),
            "kernel": Command("kernel", "which kernel this shell talks to, and its figures", self.kernel),
            "help": Command("help", "this list", self.help),
            "quit": Command("quit", "leave the shell (also: exit, Ctrl-D)", self.quit),
        }
        self.done = False

    async def execute(self, line: str) -> None:
        first, _, rest = line.strip().partition(" ")
        if not first:
            return
        name = {"exit": "quit", "?": "help"}.get(first, first)
        cmd = self.commands.get(name)
        if cmd is None:
            self.console.print(f"[red]unknown command:[/] {escape(name)}  (type [bold]help[/] for the list)")
            return
        if cmd.raw:
            args = [rest.strip()] if rest.strip() else []
        else:
            try:
                args = shlex.split(rest)
            except ValueError as exc:
                self.console.print(f"[red]parse error:[/] {escape(str(exc))}")
                return
        try:
            await _until_interrupted(cmd.run, args)
        except UsageError as exc:
            self.console.print(f"[red]{escape(str(exc))}[/]\nusage: {escape(cmd.usage)}")
        except SyscallError as exc:
            self.console.print(f"[red]{exc.errno.value}:[/] {escape(exc.message)}")

    # -- commands ------------------------------------------------------------------------

    async def spawn(self, args: list[str]) -> None:
        if not args:
            raise UsageError("spawn needs a program")
        pid = await self.sys.proc.spawn(args[0], *args[1:])
        self.console.print(f"[green]started pid {pid}[/] ({escape(args[0])})")

    async def ps(self, args: list[str]) -> None:
        if args not in ([], ["-a"]):
            raise UsageError(f"unexpected arguments: {' '.join(args)}")
        self.console.print(ps_table(await self.sys.proc.ps(), with_reason=bool(args)))

    async def kill(self, args: list[str]) -> None:
        (pid,) = _ints(args, 1)
        self._not_itself(pid, "kill")
        await self.sys.proc.kill(pid)
        self.console.print(f"killed {pid}")

    async def wait(self, args: list[str]) -> None:
        pids = _ints(args, 0) if not args else _ints(args, 1)
        status = await self.sys.proc.wait(pids[0] if pids else None)
        style = "green" if status.exit_code == 0 else "red"
        self.console.print(f"[{style}]pid {status.pid} ({escape(status.name)}) exited {status.exit_code}[/]")
        body = status.result if status.exit_code == 0 else status.reason
        self.console.print(escape(body if isinstance(body, str) else repr(body)))

    async def nice(self, args: list[str]) -> None:
        pid, value = _ints(args, 2)
        await self.sys.proc.nice(value, pid)
        self.console.print(f"pid {pid}: nice {value}")

    async def logs(self, args: list[str]) -> None:
        follow = "-f" in args
        (pid,) = _ints([a for a in args if a != "-f"], 1)
        for line in await self.sys.read_log(pid):
            self.console.print(escape(line), highlight=False)
        if follow:
            names = {pid: str(pid)}
            await self.sys.follow_log(pid, lambda ev: render_event(self.console, ev, names))

    async def top(self, args: list[str]) -> None:
        opts = _options(args, {"-n": int, "-d": float})
        count, delay = opts.get("-n"), max(opts.get("-d", 1.0), 0.1)
        view = TopView(self.sys)
        if not self.console.is_terminal:  # a pipe: print snapshots, one by default
            for i in range(count or 1):
                if i:
                    await trio.sleep(delay)
                self.console.print(await view.render())
            return
        with Live(await view.render(), console=self.console, auto_refresh=False, transient=False) as live:
            shown = 1
            while count is None or shown < count:
                await trio.sleep(delay)
                live.update(await view.render(), refresh=True)
                shown += 1

    async def stop(self, args: list[str]) -> None:
        (pid,) = _ints(args, 1)
        self._not_itself(pid, "stop")
        await self.sys.proc.signal(pid, "stop")
        self.console.print(f"stopped {pid}")

    def _not_itself(self, pid: int, what: str) -> None:
        """The shell is a session process: killing it would leave every later command failing
        (ESRCH), stopping it would hang the shell until someone else continues it."""
        if pid == self.sys.pid:
            raise UsageError(f"pid {pid} is this shell's own session: it will not {what} itself (use quit to leave)")

    async def cont(self, args: list[str]) -> None:
        (pid,) = _ints(args, 1)
        await self.sys.proc.signal(pid, "cont")
        self.console.print(f"continued {pid}")

    async def attach(self, args: list[str]) -> None:
        (pid,) = _ints(args, 1)
        if self.lines is None:
            raise UsageError("attach needs a terminal")
        names = {pid: str(pid)}
        for line in (await self.sys.read_log(pid, tail=20)):
            self.console.print(escape(line), highlight=False)
        self.console.print(f"[bold]attached to {pid}[/]: its output follows; lines you type go to its mailbox; "
                           "Ctrl-D or /detach leaves")
        async with trio.open_nursery() as nursery:

            async def follow() -> None:
                await self.sys.follow_log(pid, lambda ev: render_event(self.console, ev, names))
                self.console.print(f"\n[magenta]pid {pid} has exited[/]")
                nursery.cancel_scope.cancel()

            nursery.start_soon(follow)
            while True:
                line = await self.lines.read()
                if line is None or line.strip() == "/detach":
                    break
                try:
                    await self.sys.ipc.send(pid, line)
                    self.console.print(f"[dim]→ sent to {pid}'s mailbox[/]")
                except SyscallError as exc:
                    if exc.errno is Errno.ENOSYS:
                        self.console.print("[yellow]this kernel has no mailboxes (ipc.send): attach can only watch[/]")
                    else:
                        self.console.print(f"[red]{exc.errno.value}:[/] {escape(exc.message)}")
            nursery.cancel_scope.cancel()

    async def mem(self, args: list[str]) -> None:
        (pid,) = _ints(args, 1)
        self.console.print(mem_table(await self.sys.mem.stat(pid)))

    async def history(self, args: list[str]) -> None:
        past = _readline_history() or (self.lines.history if self.lines else [])
        for i, line in enumerate(past[-200:], max(1, len(past) - 199)):
            self.console.print(f"{i:>5}  {escape(line)}", highlight=False)

    async def tools(self, args: list[str]) -> None:
        from llmos.agents.tooluse import describe_tools

        tools = await self.sys.tools.list(*args)
        table = Table(box=None, header_style="bold", show_header=False)
        for line, t in zip(describe_tools(tools).splitlines(), tools):
            signature, _, description = line[2:].partition("): ")
            table.add_row(f"[bold]{escape(signature)})[/]", escape(description))
        self.console.print(table if tools else "no tools match")

    async def mount(self, args: list[str]) -> None:
        if len(args) < 2:
            raise UsageError("mount needs a prefix and a command")
        names = await self.sys.mcp.mount(args[0], args[1], *args[2:])
        self.console.print(f"[green]mounted {escape(args[0])}:[/] {escape(' '.join(names))}")

    async def umount(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError("umount needs a prefix")
        await self.sys.mcp.unmount(args[0])
        self.console.print(f"unmounted {escape(args[0])}")

    async def send(self, args: list[str]) -> None:
        """The message is the rest of the line exactly as typed: `send 4 {"x": 1}` sends that
        text; `send --json 4 {"x": 1}` sends the object (and refuses what is not JSON)."""
        line = args[0] if args else ""
        as_json = line.startswith("--json ") or line == "--json"
        if as_json:
            line = line[len("--json"):].lstrip()
        pid_word, _, message = line.partition(" ")
        if not pid_word or not message.strip():
            raise UsageError("send needs a pid and a message")
        (pid,) = _ints([pid_word], 1)
        body: Any = message.strip()
        if as_json:
            try:
                body = json.loads(body)
            except ValueError as exc:
                raise UsageError(f"not JSON ({exc}); without --json the line is sent as text") from None
        await self.sys.ipc.send(pid, body)
        self.console.print(f"sent to {pid} ({'JSON ' + type(body).__name__ if as_json else 'text'})")

    async def kernel(self, args: list[str]) -> None:
        stat = await self.sys.stat()
        self.console.print(f"{escape(self.where)}\n{escape(stat.model)} · {stat.policy} · up {stat.uptime:.0f}s · "
                           f"{stat.processes} processes · {stat.tokens_generated} tokens generated")

    async def help(self, args: list[str]) -> None:
        table = Table(show_header=False, box=None)
        for cmd in self.commands.values():
            table.add_row(f"[bold]{escape(cmd.usage)}[/]", cmd.help)
        self.console.print(table)

    async def quit(self, args: list[str]) -> None:
        self.done = True


def ps_table(procs: list[ProcInfo], with_reason: bool = False) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("PID", "PPID", "NAME", "STATE", "WCHAN", "NI", "PROMPT", "GEN", "LLM s", "KV MB", "AGE s"):
        table.add_column(col, justify="right" if col not in ("NAME", "STATE", "WCHAN") else "left")
    if with_reason:
        table.add_column("EXIT")
    colors = {"RUNNING": "green", "READY": "yellow", "BLOCKED": "blue", "SLEEPING": "cyan", "STOPPED": "red", "ZOMBIE": "dim"}
    for p in procs:
        row = [
            str(p.pid), str(p.ppid), escape(p.name), f"[{colors.get(p.state.value, '')}]{p.state.value}[/]",
            p.wchan, str(p.nice), str(p.prompt_tokens), str(p.generated_tokens), f"{p.llm_time:.1f}",
            f"{p.kv_bytes / 2**20:.1f}", f"{p.age:.0f}",
        ]
        if with_reason:
            last = p.exit_reason.splitlines()[-1] if p.exit_reason else ""
            row.append("" if p.exit_code is None else f"{p.exit_code} {escape(last)}")
        table.add_row(*row)
    return table


class TopView:
    """`top`: the process table with rates, redrawn from proc.ps and kernel.stat."""

    def __init__(self, sys: Sys) -> None:
        self.sys = sys
        self.last: dict[int, tuple[float, int]] = {}  # pid -> (time, generated tokens)
        self.last_total: tuple[float, int] | None = None
        self.has_mem: bool | None = None  # learnt on first use: does the kernel have mem.stat?

    async def render(self) -> Any:
        procs, stat = await self.sys.proc.ps(), await self.sys.stat()
        now = time.monotonic()
        total = _rate(self.last_total, now, stat.tokens_generated)
        self.last_total = (now, stat.tokens_generated)
        # The summary is a line of its own, not the table's title: a title wraps at the table's
        # width, which is only as wide as its columns.
        title = Text(
            f"{stat.model} · {stat.policy} · up {stat.uptime:.0f}s · {stat.processes} processes · "
            f"batch {stat.running} running {stat.waiting} waiting · {stat.tokens_generated} tokens "
            f"({total:.1f} tok/s) · KV {stat.kv_bytes / 2**20:.1f} MB", style="bold")
        table = Table(box=None, header_style="bold", expand=True)
        for col in ("PID", "NAME", "STATE", "NI", "TOKENS", "TOK/S", "PAGES", "KV MB"):
            table.add_column(col, justify="left" if col in ("NAME", "STATE") else "right")
        colors = {"RUNNING": "green", "READY": "yellow", "BLOCKED": "blue", "SLEEPING": "cyan", "STOPPED": "red", "ZOMBIE": "dim"}
        seen = {}
        for p in procs:
            seen[p.pid] = (now, p.generated_tokens)
            rate = _rate(self.last.get(p.pid), now, p.generated_tokens)
            table.add_row(
                str(p.pid), escape(p.name), f"[{colors.get(p.state.value, '')}]{p.state.value}[/]", str(p.nice),
                str(p.prompt_tokens + p.generated_tokens), f"{rate:.1f}", await self._pages(p),
                f"{p.kv_bytes / 2**20:.1f}",
            )
        self.last = seen
        return Group(title, table)

    async def _pages(self, p: ProcInfo) -> str:
        """Resident memory pages, from mem.stat when the kernel has it."""
        if self.has_mem is False or p.state.value == "ZOMBIE":
            return "-"
        try:
            stat = await self.sys.call("mem.stat", pid=p.pid)
        except SyscallError as exc:
            if exc.errno in (Errno.ENOSYS, Errno.EINVAL):
                self.has_mem = False
            return "-"
        self.has_mem = True
        fields = stat.model_dump()
        value = fields.get("resident_pages", fields.get("resident"))
        return "-" if value is None else str(value if not isinstance(value, list) else len(value))


def _rate(last: tuple[float, int] | None, now: float, count: int) -> float:
    if last is None or now <= last[0]:
        return 0.0
    return max(count - last[1], 0) / (now - last[0])


def _options(args: list[str], kinds: dict[str, type]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    it = iter(args)
    for word in it:
        if word not in kinds:
            raise UsageError(f"unexpected argument: {word}")
        value = next(it, None)
        try:
            opts[word] = kinds[word](value)
        except (TypeError, ValueError):
            raise UsageError(f"{word} needs a number") from None
    return opts


async def _until_interrupted(fn: Callable[[list[str]], Awaitable[None]], args: list[str]) -> None:
    """Run a command; Ctrl-C ends the command (cleanly, by cancellation), not the shell."""
    try:
        async with trio.open_nursery() as nursery:

            async def on_interrupt() -> None:
                with trio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(on_interrupt)
            await fn(args)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the command's own error, as it raised it
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _readline_history() -> list[str]:
    try:
        import readline
    except ImportError:
        return []
    return [readline.get_history_item(i) for i in range(1, readline.get_current_history_length() + 1)]


def mem_table(st: MemStat) -> Table | str:
    if not st.memory:
        return f"pid {st.pid} has no memory pages"
    kind = "named" if st.named else "anonymous"
    table = Table(box=None, header_style="bold", title_justify="left", title=(
        f"pid {st.pid}: memory {escape(st.memory)} ({kind}, {st.policy}) — {st.resident_tokens}/{st.budget} tokens "
        f"resident; {st.pages} pages: {st.resident_pages} resident, {st.evicted_pages} evicted, "
        f"{st.pinned_pages} pinned; {st.faults} faults, {st.page_ins} page ins, {st.page_outs} page outs; "
        f"turn fault p99 {st.fault_p99_ms:.1f} ms"
    ))
    dated = len({_day(e.time) for e in st.entries}) > 1
    columns = ("PAGE", "POS", "MSG", "ROLE", "TOKENS", "STATE", "FLAGS", "REFS", "LAST", "SAID", "WHY RECALLED", "TEXT")
    for col in columns:
        table.add_column(col, justify="right" if col in ("PAGE", "POS", "MSG", "TOKENS", "REFS", "LAST") else "left")
    for e in st.entries:
        state = "[green]resident[/]" if e.state == "resident" else "[dim]evicted[/]"
        flags = " ".join(f for f, on in (("pinned", e.pinned), ("recalled", e.recalled)) if on)
        said = _day(e.time) if dated else time.strftime("%H:%M", time.localtime(e.time))
        table.add_row(
            str(e.page), str(e.position), str(e.message), e.role, str(e.tokens), state, flags,
            str(e.accesses), str(e.last_access), said, why_text(e.why), escape(e.preview),
        )
    return table


def why_text(why: Why | None) -> str:
    """A recalled page's score parts, shortest first: dense cosine and rank, BM25 and rank,
    the period the question named, the hit it neighbours, the fused score."""
    if why is None:
        return ""
    parts = [f"dense {why.dense:.2f}" + (f" #{why.dense_rank}" if why.dense_rank else "")]
    if why.lexical_rank:
        parts.append(f"bm25 {why.lexical:.1f} #{why.lexical_rank}")
    if why.time:
        parts.append("in period")
    if why.neighbour_of is not None:
        parts.append(f"next to {why.neighbour_of}")
    parts.append(f"= {why.score:.4f}")
    return ", ".join(parts)


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(t))


def _ints(args: list[str], n: int) -> list[int]:
    if len(args) != n:
        raise UsageError(f"expected {n} argument(s), got {len(args)}")
    try:
        return [int(a) for a in args]
    except ValueError:
        raise UsageError(f"not a number: {' '.join(args)}") from None


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


async def run_shell(socket: Path | None = None, local: Boot | None = None) -> int:
    """Connect to the daemon (or, given `local`, boot a kernel here with it) and read commands.
    Which kernel it is, and how it was found, is said first (on stderr, so piped output stays clean)."""
    console, note = Console(), Console(stderr=True)
    interactive = _sys.stdin.isatty()
    if interactive:
        _setup_history()
    if local is not None:
        async with local() as kernel:
            where = f"local kernel in this process (--local): {kernel.describe()}; nothing outside this shell sees it"
            note.print(f"[bold]llmos shell[/] — {escape(where)}." + (" Type [bold]help[/]." if interactive else ""))
            return await _repl(Shell(kernel.session("shell"), console, where=where), interactive)
    path = socket or socket_path()
    how = ("--socket" if socket is not None else "LLMOS_SOCKET" if os.environ.get("LLMOS_SOCKET")
           else f"the data directory, {'LLMOS_HOME' if os.environ.get('LLMOS_HOME') else 'default'}")
    if not daemon_listening(path):
        stale = " (a socket file is there, but the daemon that made it is gone)" if path.exists() else ""
        note.print(f"[red]llmos shell:[/] no llmos daemon is listening at {escape(str(path))}{stale}, found via "
                   f"{escape(how)}.\nStart one with [bold]llmos daemon[/], point at one with [bold]--socket[/], "
                   f"or run [bold]llmos shell --local[/] for a kernel inside this shell.", soft_wrap=True)
        return 1
    try:
        async with connect(path, name="shell") as sys:
            hello = sys.transport.hello  # type: ignore[attr-defined]
            info = _daemon_info(path)
            who = f"the llmos daemon pid {info['pid']}" if info.get("pid") else "the llmos daemon"
            where = (f"connected to {who} at {path} (found via {how}), model {hello.model}; "
                     f"this shell is session pid {sys.pid}")
            note.print(f"[bold]llmos shell[/] — {escape(where)}." + (" Type [bold]help[/]." if interactive else ""),
                       soft_wrap=True)
            return await _repl(Shell(sys, console, where=where), interactive)
    except DaemonUnavailable as exc:
        note.print(f"[red]llmos shell:[/] {escape(exc.message)}")
        return 1


def _daemon_info(path: Path) -> dict[str, Any]:
    """daemon.json beside the socket, when it describes this socket's daemon."""
    try:
        info = json.loads((path.parent / "daemon.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) and info.get("socket") == str(path) else {}


async def _repl(shell: Shell, interactive: bool) -> int:
    async with trio.open_nursery() as nursery:
        shell.lines = Lines(nursery)
        while not shell.done:
            line = await shell.lines.read("llmos> " if interactive else "")
            if line is None:
                break
            await shell.execute(line)
        nursery.cancel_scope.cancel()
    return 0


def _setup_history() -> None:
    try:
        import atexit
        import readline
    except ImportError:  # not on every platform
        return
    path = data_dir() / "shell_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    atexit.register(readline.write_history_file, path)
