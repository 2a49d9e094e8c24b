"""`llmos shell`: an interactive prompt over the syscall API.

The shell is a session process: every command is a syscall made on its behalf, so it can do
exactly what an agent with full capabilities could, and nothing behind the kernel's back.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmos.agents.sdk import Sys
from llmos.config import KernelConfig, data_dir
from llmos.runtime import boot, session
from llmos.shell.run import render_event
from llmos.syscalls.errors import SyscallError
from llmos.syscalls.mem import MemStat
from llmos.syscalls.proc import ProcInfo


class UsageError(Exception):
    pass


@dataclass
class Command:
    usage: str
    help: str
    run: Callable[[list[str]], Awaitable[None]]


class Shell:
    def __init__(self, sys: Sys, console: Console) -> None:
        self.sys = sys
        self.console = console
        self.commands: dict[str, Command] = {
            "spawn": Command("spawn PROGRAM [ARGS...]", "start an agent program in the background", self.spawn),
            "ps": Command("ps [-a]", "list processes (-a: with exit reasons)", self.ps),
            "kill": Command("kill PID", "kill a process", self.kill),
            "wait": Command("wait [PID]", "wait for a child to exit and show its result", self.wait),
            "nice": Command("nice PID VALUE", "set a process's nice value (-20..19)", self.nice),
            "logs": Command("logs [-f] PID", "show a process's log (-f: follow until it exits)", self.logs),
            "mem": Command("mem PID", "a process's memory: page table, faults, evictions", self.mem),
            "tools": Command("tools [PATTERN...]", "the tools (syscalls) you may use, with their arguments", self.tools),
            "mount": Command("mount PREFIX COMMAND [ARGS...]", "mount a stdio MCP server's tools as PREFIX.*", self.mount),
            "umount": Command("umount PREFIX", "unmount an MCP server", self.umount),
            "send": Command("send PID MESSAGE", "put a message (JSON, or plain text) in a process's mailbox", self.send),
            "help": Command("help", "this list", self.help),
            "quit": Command("quit", "leave the shell (also: exit, Ctrl-D)", self.quit),
        }
        self.done = False

    async def execute(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.console.print(f"[red]parse error:[/] {escape(str(exc))}")
            return
        if not words:
            return
        name, args = words[0], words[1:]
        name = {"exit": "quit", "?": "help"}.get(name, name)
        cmd = self.commands.get(name)
        if cmd is None:
            self.console.print(f"[red]unknown command:[/] {escape(name)}  (type [bold]help[/] for the list)")
            return
        try:
            await cmd.run(args)
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

    async def mem(self, args: list[str]) -> None:
        (pid,) = _ints(args, 1)
        self.console.print(mem_table(await self.sys.mem.stat(pid)))

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
        if len(args) < 2:
            raise UsageError("send needs a pid and a message")
        (pid,) = _ints(args[:1], 1)
        text = " ".join(args[1:])
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        await self.sys.ipc.send(pid, body)
        self.console.print(f"sent to {pid}")

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
    colors = {"RUNNING": "green", "READY": "yellow", "BLOCKED": "blue", "SLEEPING": "cyan", "ZOMBIE": "dim"}
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


def mem_table(st: MemStat) -> Table | str:
    if not st.memory:
        return f"pid {st.pid} has no memory pages"
    kind = "named" if st.named else "anonymous"
    table = Table(box=None, header_style="bold", title_justify="left", title=(
        f"pid {st.pid}: memory {escape(st.memory)} ({kind}, {st.policy}) — {st.resident_tokens}/{st.budget} tokens "
        f"resident; {st.pages} pages: {st.resident_pages} resident, {st.evicted_pages} evicted, "
        f"{st.pinned_pages} pinned; {st.faults} faults, {st.page_ins} page ins, {st.page_outs} page outs"
    ))
    for col in ("PAGE", "POS", "MSG", "ROLE", "TOKENS", "STATE", "FLAGS", "REFS", "LAST", "TEXT"):
        table.add_column(col, justify="right" if col in ("PAGE", "POS", "MSG", "TOKENS", "REFS", "LAST") else "left")
    for e in st.entries:
        state = "[green]resident[/]" if e.state == "resident" else "[dim]evicted[/]"
        flags = " ".join(f for f, on in (("pinned", e.pinned), ("recalled", e.recalled)) if on)
        table.add_row(
            str(e.page), str(e.position), str(e.message), e.role, str(e.tokens), state, flags,
            str(e.accesses), str(e.last_access), escape(e.preview),
        )
    return table


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


async def run_shell(config: KernelConfig) -> int:
    import sys as _sys

    console = Console()
    interactive = _sys.stdin.isatty()
    if interactive:
        _setup_history()
    console.print("[bold]llmos shell[/] — loading the model…" if interactive else "", end="")
    async with boot(config) as kernel:
        shell = Shell(session(kernel, "shell"), console)
        if interactive:
            console.print(f" ready ({escape(kernel.backend.name)}). Type [bold]help[/].")
        while not shell.done:
            line = await trio.to_thread.run_sync(_read_line, "llmos> " if interactive else "")
            if line is None:
                break
            await shell.execute(line)
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
