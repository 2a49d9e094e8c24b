"""What `llmos run` and the shell print, on the tiny model: one voice per process when several
stream at once, and `top` as wide as the terminal."""

from __future__ import annotations

import random
from io import StringIO

import trio
from conftest import kernel_with, prog
from daemon_util import daemon_with, short_home
from rich.console import Console

from llmos.abi.log import LogEvent
from llmos.runtime import session
from llmos.servers.daemon import INFO_FILE
from llmos.shell.run import Voices
from llmos.shell.shell import TopView


def test_voices_never_mix_two_processes_on_a_line():
    rng = random.Random(3)
    texts = {2: "The CPU runs instructions.\nIt has cores.\n", 3: "RAM stands for random access memory, the working space.\n"}
    events, cursors = [], dict.fromkeys(texts, 0)
    while any(cursors[p] < len(t) for p, t in texts.items()):  # tokens of both, interleaved at random
        pid = rng.choice([p for p in texts if cursors[p] < len(texts[p])])
        n = rng.randint(1, 5)
        events.append(LogEvent(pid=pid, kind="text", time=0.0, text=texts[pid][cursors[pid]: cursors[pid] + n]))
        cursors[pid] += n
    out = StringIO()
    voices = Voices(Console(file=out, width=200), {2: "cpu", 3: "ram"})
    for event in events[:9]:
        voices(event)
    voices(LogEvent(pid=2, kind="log", time=0.0, text="halfway"))
    for event in events[9:]:
        voices(event)
    voices(LogEvent(pid=3, kind="log", time=0.0, text="answer: RAM stands for random access memory, the working space. That is all."))
    voices.close()
    lines = out.getvalue().splitlines()
    said = {pid: "".join(line.split("] ", 1)[1] + "\n" for line in lines if line.startswith(f"{name}[{pid}] ") and "halfway" not in line and "answer:" not in line)
            for pid, name in ((2, "cpu"), (3, "ram"))}
    assert said[2].replace("\n", "") == texts[2].replace("\n", "")  # whole, in order (a log line may split a line)
    assert said[3] == texts[3]
    assert "cpu[2] halfway" in lines
    assert "ram[3] answer: (streamed above) That is all." in lines
    assert voices.was_streamed(3, "RAM stands for random access memory, the working space.")


def test_top_uses_the_terminals_width(tiny_backend):
    async def main():
        async with kernel_with(tiny_backend) as k:
            sh = session(k, "top")
            await sh.proc.spawn(prog("sleeper"), "60")
            view = TopView(sh)
            out = StringIO()
            Console(file=out, width=220).print(await view.render())
            return out.getvalue().splitlines()

    lines = trio.run(main)
    assert lines[0].startswith("tiny-llama · rr · up") and lines[0].rstrip().endswith("MB")  # one line, not wrapped
    assert len(lines[1]) > 150  # the table spreads over the terminal


def test_daemon_clears_what_a_crashed_daemon_left(tiny_backend):
    import json
    import socket

    home = short_home()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(home / "daemon.sock"))  # a socket file nobody listens on
    stale.close()
    (home / INFO_FILE).write_text(json.dumps({"pid": 2**22 + 17, "socket": str(home / "daemon.sock")}))

    async def main():
        async with daemon_with(tiny_backend, home=home) as d:
            info = json.loads((home / INFO_FILE).read_text())
            return d.cleared, info

    cleared, info = trio.run(main)
    assert len(cleared) == 2 and "not running" in cleared[1]
    import os

    assert info["pid"] == os.getpid()
