"""`llmos run PROGRAM [ARGS]`: boot a kernel, run one program, stream what it does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.markup import escape

from llmos.abi import ProcessExit
from llmos.abi.errors import SyscallError
from llmos.abi.program import ProgramError, locate
from llmos.agents import program
from llmos.config import KernelConfig
from llmos.kernel.state.events import Event
from llmos.runtime import boot, session

EXIT_USAGE = 2


def render_event(console: Console, event: Event, names: dict[int, str]) -> None:
    """Print one kernel event: generated text inline, log lines and lifecycle on their own line."""
    who = names.get(event.pid, str(event.pid))
    if event.kind == "text":
        console.print(escape(event.text), end="", style="cyan", highlight=False, soft_wrap=True)
    elif event.kind == "log":
        console.print(f"[dim]{escape(f'[{who}]')}[/] {escape(event.text)}", highlight=False, soft_wrap=True)
    elif event.kind in ("spawn", "exit", "signal"):
        console.print(f"[magenta]● pid {event.pid} {event.kind}:[/] {escape(event.text)}", highlight=False)


async def run_program(config: KernelConfig, spec: str, args: list[str], quiet: bool = False) -> int:
    console = Console(stderr=quiet)
    err = Console(stderr=True)
    try:
        locate(spec)  # fail fast, before the model loads
    except ProgramError as exc:
        err.print(f"[red]llmos run:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    async with boot(config) as kernel:
        sh = session(kernel, "run")
        with kernel.events.watch() as events:
            try:
                pid = await sh.proc.spawn(spec, *args)
            except SyscallError as exc:
                err.print(f"[red]llmos run:[/] {escape(exc.message)}", soft_wrap=True)
                return EXIT_USAGE
            names = {pid: kernel.procs.get(pid).name}

            async def show() -> None:
                async for event in events:
                    if event.kind == "spawn" and event.pid not in names:
                        names[event.pid] = event.text.split(" ", 1)[0]
                    if not quiet:
                        render_event(console, event, names)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(show)
                status = await sh.proc.wait(pid)
                await trio.sleep(0.05)  # let the last events print
                nursery.cancel_scope.cancel()
    if status.exit_code == 0:
        result = status.result
        out = result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False)
        print(out)
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
            async with trio.open_nursery() as nursery:
                if not quiet:
                    nursery.start_soon(_follow, sys, lambda ev: render_event(console, ev, names))
                try:
                    result = await entry(sys, args)
                except ProcessExit as exc:
                    code, result = exc.code, exc.result
                except Exception as exc:  # the program's bug, reported as the kernel reports it
                    code, reason = 1, "".join(traceback.format_exception(exc)).rstrip()
                await trio.sleep(0.05)  # let the last streamed events print
                nursery.cancel_scope.cancel()
    except DaemonUnavailable as exc:
        err.print(f"[red]llmos run --remote:[/] {escape(exc.message)}", soft_wrap=True)
        return EXIT_USAGE
    if code == 0:
        print(result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False, default=repr))
    else:
        err.print(f"[red]{escape(name)} exited {code}[/]" + (f":\n{escape(reason)}" if reason else ""), soft_wrap=True)
    return code


async def _follow(sys: Any, show: Any) -> None:
    try:
        await sys.follow_log(sys.pid, show)
    except SyscallError:
        pass  # the session ended first (the program called proc.exit)
