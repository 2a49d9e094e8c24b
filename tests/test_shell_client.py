"""`llmos shell` is a client of the syscall ABI and the SDK: run with torch (and the kernel's
other heavy dependencies) unimportable, it drives a real daemon (on the tiny model) through
ps, top, mem, logs, stop, cont, kill and wait, and never loads a module of the kernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial

import trio
from conftest import prog
from daemon_util import daemon_with
from test_layers import BLOCK_HEAVY

END = "end-of-reply"  # an unknown command: its error marks where a command's output ends

SHELL = BLOCK_HEAVY + """
from llmos.shell.cli import main
code = main(["shell", "--socket", sys.argv[1]])
loaded = sorted(m for m in sys.modules if m.startswith(("llmos.kernel", "llmos.syscalls", "llmos.servers", "llmos.runtime", "llmos.benchmarks", "llmos.shell.boot")))
print("LOADED", loaded, file=sys.stderr)
sys.exit(code)
"""


class ShellProcess:
    """The shell in its own interpreter, fed one command at a time."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = ""

    async def __call__(self, line: str, timeout: float = 60) -> str:
        """What `line` printed (everything before the marker command's error)."""
        await self.proc.stdin.send_all(f"{line}\n{END}\n".encode())
        marker = re.compile(f"unknown command: {END}.*\n")
        with trio.fail_after(timeout):
            while not (found := marker.search(self.out)):
                data = await self.proc.stdout.receive_some(65536)
                assert data, f"the shell ended early: {self.out}"
                self.out += data.decode()
        reply, self.out = self.out[: found.start()], self.out[found.end() :]
        return reply

    async def until(self, line: str, want: str, timeout: float = 60) -> str:
        """Repeat `line` until its output shows `want` (the program runs on its own time)."""
        with trio.fail_after(timeout):
            while want not in (reply := await self(line)):
                await trio.sleep(0.1)
        return reply


def test_shell_drives_a_daemon_without_torch(tiny_backend):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", COLUMNS="200")

    async def main():
        async with daemon_with(tiny_backend) as d:
            env["LLMOS_TOKEN"] = d.token
            cmd = [sys.executable, "-c", SHELL, str(d.settings.socket_path)]
            async with trio.open_nursery() as nursery:
                proc = await nursery.start(partial(
                    trio.run_process, cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    check=False, env=env))
                errors: list[bytes] = []

                async def drain_stderr() -> None:
                    async for data in proc.stderr:
                        errors.append(data)

                nursery.start_soon(drain_stderr)
                sh = ShellProcess(proc)
                seen = {"spawn": await sh(f"spawn {prog('rememberer')} The meeting moved to Tuesday.")}
                seen["logs"] = await sh.until("logs 2", "stored")
                seen["ps"] = await sh.until("ps", "SLEEPING")
                seen["top"] = await sh("top -n 1")
                seen["mem"] = await sh("mem 2")
                seen["stop"] = await sh("stop 2")
                seen["ps stopped"] = await sh("ps")
                seen["cont"] = await sh("cont 2")
                seen["ps continued"] = await sh.until("ps", "SLEEPING")
                seen["kill self"] = await sh("kill 1")
                seen["kill"] = await sh("kill 2")
                seen["wait"] = await sh("wait 2")
                seen["kernel"] = await sh("kernel")
                await proc.stdin.send_all(b"quit\n")
                with trio.fail_after(30):
                    await proc.wait()
            return seen, proc.returncode, b"".join(errors).decode()

    seen, code, err = trio.run(main)
    assert code == 0, err
    assert "LOADED []" in err, err  # no kernel module, and (else it had failed) no torch
    assert "connected to the llmos daemon" in err and "session pid 1" in err
    assert "started pid 2" in seen["spawn"]
    assert "stored" in seen["logs"]
    row = next(line for line in seen["ps"].splitlines() if "rememberer" in line)
    assert row.split()[:4] == ["2", "1", "rememberer", "SLEEPING"]
    assert "tiny-llama · rr · up" in seen["top"] and "PAGES" in seen["top"]
    top_row = next(line for line in seen["top"].splitlines() if "rememberer" in line).split()
    assert top_row[:3] == ["2", "rememberer", "SLEEPING"] and top_row[6] == "1"  # one resident page
    assert "pid 2: memory" in seen["mem"] and "resident" in seen["mem"] and "Tuesday" in seen["mem"]
    assert "stopped 2" in seen["stop"] and "STOPPED" in seen["ps stopped"]
    assert "continued 2" in seen["cont"]
    assert "this shell's own session" in seen["kill self"]
    assert "killed 2" in seen["kill"] and "pid 2 (rememberer) exited 137" in seen["wait"]
    assert "connected to the llmos daemon" in seen["kernel"] and "tiny-llama" in seen["kernel"]
