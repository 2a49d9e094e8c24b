"""`llmos run PROGRAM [ARGS]`: run one program on a kernel booted here (or, with --remote, here
against the daemon's kernel) and stream what it does. A client of the syscall API: the kernel
comes from the `Boot` that cli.py passes in (shell/local.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.markup import escape

from llmos.abi import ProcessExit
from llmos.abi.errors import SyscallError
from llmos.abi.log import LogEvent
from llmos.abi.program import ProgramError, locate
from llmos.agents import program
from llmos.shell.local import Boot

EXIT_USAGE = 2


def render_event(console: Console, event: LogEvent, names: dict[int, str]) -> None:
    """Print one kernel event: generated text inline, log lines and lifecycle on their own line.
    (For one process at a time, as `logs -f` and `attach` follow one; `llmos run` uses Voices.)"""
    who = names.get(event.pid, str(event.pid))
    if event.kind == "text":
        console.print(escape(event.text), end="", style="cyan", highlight=False, soft_wrap=True)
    elif event.kind == "log":
        console.print(f"[dim]{escape(f'[{who}]')}[/] {escape(event.text)}", highlight=False, soft_wrap=True)
    elif event.kind in ("spawn", "exit", "signal"):
        console.print(f"[magenta]● pid {event.pid} {event.kind}:[/] {escape(event.text)}", highlight=False)
    elif event.kind == "kernel":
        console.print(f"[magenta]● kernel:[/] {escape(event.text)}", highlight=False)


ECHO_CHARS = 40  # a log line repeating at least this much of what a process streamed says so instead
SHORT_ANSWER = 12  # ...or repeating a whole answer of at least this many characters


class Voices:
    """`llmos run`'s view of what the kernel's processes do, printed as it happens.

    Generated text streams inline, one voice at a time: each line of a process's text starts
    with its name and pid, and while one process has a line open, the others' text is held
    (each in its own buffer) and printed when that line ends, so concurrent answers never mix
    mid-line. Log lines and lifecycle events get lines of their own; a log line that repeats what
    its process just streamed (an agent logging its answer) shows that part as "(streamed
    above)" instead of printing it twice."""

    def __init__(self, console: Console, names: dict[int, str]) -> None:
        self.console = console
        self.names = names
        self.open: int | None = None  # whose line is open on the screen
        self.held: dict[int, str] = {}  # text not printed yet, by pid, oldest voice first
        self.streamed: dict[int, str] = {}  # what each process streamed lately
        self.answers: dict[int, list[str]] = {}  # its latest completions (llm.chat ends each with a "\n" event)
        self._current: dict[int, str] = {}

    def __call__(self, event: LogEvent) -> None:
        if event.kind == "text":
            self.streamed[event.pid] = (self.streamed.get(event.pid, "") + event.text)[-8000:]
            if event.text == "\n":
                answer = self._current.pop(event.pid, "").strip()
                if answer:
                    self.answers[event.pid] = [answer, *self.answers.get(event.pid, [])][:8]
            else:
                self._current[event.pid] = self._current.get(event.pid, "") + event.text
            self.held[event.pid] = self.held.get(event.pid, "") + event.text
            self._flush()
            return
        self._end_line()
        if event.kind == "log":
            self.console.print(f"[dim]{escape(self._who(event.pid))}[/] {escape(self._elide(event.pid, event.text))}",
                               highlight=False, soft_wrap=True)
        else:
            render_event(self.console, event, self.names)

    def was_streamed(self, pid: int, text: str) -> bool:
        return bool(text.strip()) and text.strip() in self.streamed.get(pid, "")

    def close(self) -> None:
        """Print whatever is still held (text that never ended its line)."""
        for pid in list(self.held):
            if self.held.get(pid):
                self.held[pid] += "\n"
        self._flush()

    def _who(self, pid: int) -> str:
        return f"{self.names.get(pid, 'pid')}[{pid}]"

    def _flush(self) -> None:
        while True:
            if self.open is None:
                pid = next((p for p, text in self.held.items() if text), None)
                if pid is None:
                    return
                self.open = pid
                self.console.print(f"[dim cyan]{escape(self._who(pid))}[/] ", end="", highlight=False)
            line, newline, rest = self.held.get(self.open, "").partition("\n")
            if line:
                self.console.print(escape(line), end="", style="cyan", highlight=False, soft_wrap=True)
            if not newline:
                self.held[self.open] = ""
                return
            self.console.print()
            self.held.pop(self.open, None)
            if rest:
                self.held[self.open] = rest  # to the back of the queue: the others speak first
            self.open = None

    def _end_line(self) -> None:
        if self.open is not None:
            self.console.print()
            self.open = None

    def _elide(self, pid: int, text: str) -> str:
        from difflib import SequenceMatcher

        for answer in sorted(self.answers.get(pid, []), key=len, reverse=True):  # a whole answer, however short
            if len(answer) >= SHORT_ANSWER and answer in text:
                return text.replace(answer, "(streamed above)")
        streamed = self.streamed.get(pid, "")
        if len(text) < ECHO_CHARS or not streamed:
            return text
        match = SequenceMatcher(None, text, streamed, autojunk=False).find_longest_match(0, len(text), 0, len(streamed))
        if match.size < ECHO_CHARS:
            return text
        return text[: match.a] + "(streamed above)" + text[match.a + match.size :]


async def run_program(boot: Boot, spec: str, args: list[str], quiet: bool = False) -> int:
    console = Console(stderr=quiet)
    err = Console(stderr=True)
    try:
        locate(spec)  # fail fast, before the model loads
    except ProgramError as exc:
        err.print(f"[red]llmos run:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    async with boot() as kernel:
        sh = kernel.session("run")
        with kernel.watch() as events:
            try:
                pid = await sh.proc.spawn(spec, *args)
            except SyscallError as exc:
                err.print(f"[red]llmos run:[/] {escape(exc.message)}", soft_wrap=True)
                return EXIT_USAGE
            names = {p.pid: p.name for p in await sh.proc.ps() if p.pid == pid}
            voices = Voices(console, names)

            async def show() -> None:
                async for event in events:
                    if event.kind == "spawn" and event.pid not in names:
                        names[event.pid] = event.text.split(" ", 1)[0]
                    if not quiet:
                        voices(event)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(show)
                status = await sh.proc.wait(pid)
                await trio.sleep(0.05)  # let the last events print
                nursery.cancel_scope.cancel()
            voices.close()
    if status.exit_code == 0:
        result = status.result
        if quiet or not (isinstance(result, str) and voices.was_streamed(pid, result)):  # else it is on screen already
            print(result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False))
    else:
        err.print(f"[red]{escape(status.name)} (pid {status.pid}) exited {status.exit_code}:[/]\n{escape(status.reason)}", soft_wrap=True)
    return status.exit_code


async def run_remote(spec: str, args: list[str], quiet: bool = False, socket: Path | None = None) -> int:
    """`llmos run --remote`: the program runs here, its syscalls go to the daemon's kernel
    (as a session process named after it); what it generates and logs is streamed back."""
    import traceback

    from llmos.agents.remote import DaemonUnavailable, connect

    console = Console(stderr=quiet)
    err = Console(stderr=True)
    try:
        entry = program.load(spec)
    except ProgramError as exc:
        err.print(f"[red]llmos run:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    name = Path(spec).stem if spec.endswith(".py") else spec.partition(":")[0].rsplit(".", 1)[-1]
    code, result, reason = 0, None, ""
    try:
        async with connect(socket, name=name) as sys:
            names = {sys.pid: name}
            voices = Voices(console, names)
            async with trio.open_nursery() as nursery:
                if not quiet:
                    nursery.start_soon(_follow, sys, voices)
                try:
                    result = await entry(sys, args)
                except ProcessExit as exc:
                    code, result = exc.code, exc.result
                except Exception as exc:  # the program's bug, reported as the kernel reports it
                    code, reason = 1, "".join(traceback.format_exception(exc)).rstrip()
                await trio.sleep(0.05)  # let the last streamed events print
                nursery.cancel_scope.cancel()
            voices.close()
            pid = sys.pid
    except DaemonUnavailable as exc:
        err.print(f"[red]llmos run --remote:[/] {escape(exc.message)}", soft_wrap=True)
        return EXIT_USAGE
    if code == 0:
        if quiet or not (isinstance(result, str) and voices.was_streamed(pid, result)):
            print(result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False, default=repr))
    else:
        err.print(f"[red]{escape(name)} exited {code}[/]" + (f":\n{escape(reason)}" if reason else ""), soft_wrap=True)
    return code


async def _follow(sys: Any, show: Any) -> None:
    try:
        await sys.follow_log(sys.pid, show)
    except SyscallError:
        pass  # the session ended first (the program called proc.exit)
