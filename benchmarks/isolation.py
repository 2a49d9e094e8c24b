"""Isolation benchmark: what a worker per agent costs, and what hostile agents cost the kernel.

    llmos bench isolation                          # all parts, the default model
    llmos bench isolation --starts 100 --workers 32 --requests 200 --json out.json
    llmos bench isolation --compare-inprocess      # and the same busy loop under inprocess-trusted

1. Worker start: a program that logs one line, spawned `--starts` times one after the other;
   spawn -> its first syscall reaches the kernel (p50 / p99 ms), and spawn -> reaped.
2. Worker memory: `--workers` programs alive at once, each asleep in a syscall: RSS, PSS and
   private (USS) memory per worker from /proc/PID/smaps_rollup, and the template's RSS.
3. The kernel under attack: `llmos daemon` in its own process (HTTP on a free port); GET
   /health and a socket syscall (proc.getpid), `--requests` each at 20 ms intervals, first
   idle, then while hostile agents run: two busy loops, a memory hog that allocates past its
   limit again and again, fork bombs (by proc.spawn and by os.fork), a segfaulting agent
   respawned, and the symlink race. p50 / p99 / max ms side by side, and how each hostile
   agent ended. With --compare-inprocess, a daemon running agents in-process gets one busy
   loop; its /health requests time out (1 s each) until it is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

PROGRAMS = {
    "starter.py": '''
async def main(sys, args):
    await sys.log("started")
''',
    "napper.py": '''
async def main(sys, args):
    await sys.log("up")
    await sys.sleep(float(args[0]))
''',
    "busy.py": '''
async def main(sys, args):
    x = 0
    while True:
        x += 1
''',
    "hog.py": '''
async def main(sys, args):
    chunks = []
    while True:
        chunks.append(bytearray(16 * 2**20))
''',
    "forkbomb.py": '''
import os
from llmos.agents import SyscallError

async def main(sys, args):
    if args[0] == "os":
        try:
            os.fork()
        except OSError as exc:
            return type(exc).__name__
        return "forked"
    depth, fanout, refused = int(args[1]), int(args[2]), 0
    for _ in range(fanout if depth > 0 else 0):
        try:
            await sys.proc.spawn(__file__, "spawn", str(depth - 1), str(fanout))
        except SyscallError:
            refused += 1
    await sys.sleep(float(args[3]))
    return {"refused": refused}
''',
    "segfault.py": '''
import ctypes

async def main(sys, args):
    ctypes.string_at(0)
''',
    "race.py": '''
import os, threading, time
from llmos.agents import SyscallError

async def main(sys, args):
    seconds = float(args[0])
    os.makedirs("d", exist_ok=True)
    open("d/passwd", "w").write("safe")
    if not os.path.lexists("s"):
        os.symlink("/etc", "s")
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            try:
                os.rename("d", "t"); os.rename("s", "d"); os.rename("d", "s"); os.rename("t", "d")
            except OSError:
                pass

    thread = threading.Thread(target=swap)
    thread.start()
    reads = leaks = refused = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                text = await sys.fs.read("d/passwd")
                reads += 1
                leaks += text not in ("safe", "written")
                await sys.fs.write("d/passwd", "written")
            except SyscallError:
                refused += 1
    finally:
        stop.set()
        thread.join()
    return {"reads": reads, "leaks": leaks, "refused": refused}
''',
}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.5), 2), "p99": round(pick(0.99), 2), "max": round(ordered[-1], 2), "n": len(ordered)}


def write_programs(folder: Path) -> dict[str, str]:
    for name, text in PROGRAMS.items():
        (folder / name).write_text(text.lstrip())
    return {name[:-3]: str(folder / name) for name in PROGRAMS}


# -- 1 and 2: start and memory, on a kernel booted here ----------------------------------------


async def starts_and_memory(model: str | None, starts: int, workers: int, programs: dict[str, str]) -> dict[str, Any]:
    from llmos.config import KernelConfig
    from llmos.runtime import boot, session

    config = KernelConfig(max_children=max(64, workers + 1), max_session_processes=max(256, workers + 1))
    if model:
        config.model = model
    out: dict[str, Any] = {}
    async with boot(config) as kernel:
        sh = session(kernel, "bench")
        await kernel.runner.warm()
        first_call, lifetime = [], []
        with kernel.events.watch() as events:
            for _ in range(starts):
                t0 = time.perf_counter()
                pid = await sh.proc.spawn(programs["starter"])
                async for event in events:
                    if event.pid == pid and event.kind == "log":
                        break
                first_call.append((time.perf_counter() - t0) * 1000)
                await sh.proc.wait(pid)
                lifetime.append((time.perf_counter() - t0) * 1000)
        out["start_to_first_syscall_ms"] = percentiles(first_call)
        out["spawn_to_reaped_ms"] = percentiles(lifetime)
        pids = []
        with kernel.events.watch() as events:
            for _ in range(workers):
                pids.append(await sh.proc.spawn(programs["napper"], "600"))
            up: set[int] = set()
            async for event in events:
                if event.kind == "log" and event.pid in pids:
                    up.add(event.pid)
                    if len(up) == len(pids):
                        break
        rss, pss, uss = [], [], []
        for pid in pids:
            mem = memory_of(kernel.procs.get(pid).os_pid)
            rss.append(mem["Rss"])
            pss.append(mem["Pss"])
            uss.append(mem["Private_Clean"] + mem["Private_Dirty"])
        template = memory_of(kernel.runner.template.process.pid)
        out["worker_memory_mb"] = {
            "workers": len(pids),
            "rss": percentiles(rss),
            "pss": percentiles(pss),
            "private": percentiles(uss),
            "template_rss": template["Rss"],
        }
        for pid in pids:
            await sh.proc.kill(pid)
            await sh.proc.wait(pid)
    return out


def memory_of(pid: int) -> dict[str, float]:
    """Rss, Pss, Private_* of a process in MB (smaps_rollup)."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = round(int(parts[0]) / 1024, 2)
    return fields


# -- 3: the kernel while hostile agents run -----------------------------------------------------


class Daemon:
    def __init__(self, extra: list[str], nice: int = 0) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="llmos-iso-", dir="/tmp"))
        env = dict(os.environ, LLMOS_HOME=str(self.home), HF_HUB_OFFLINE="1")
        self.log = open(self.home / "daemon.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "llmos", "daemon", "--http", "127.0.0.1:0", *extra],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {(self.home / 'daemon.log').read_text()[-2000:]}")
            try:
                self.info = json.loads((self.home / "daemon.json").read_text())
                if self.info.get("pid") == self.proc.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("daemon did not start")
        self.socket = Path(self.info["socket"])
        self.token = (self.home / "daemon.token").read_text().strip()
        self.health = self.info["http"].removesuffix("/v1") + "/health"

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


async def probe(daemon: Daemon, sys: Any, requests: int, interval: float = 0.02, timeout: float = 1.0) -> dict[str, Any]:
    """/health and proc.getpid over the socket, `requests` each, one every `interval`."""
    import httpx

    health, calls, timeouts = [], [], 0
    async with httpx.AsyncClient(timeout=timeout) as client:
        for _ in range(requests):
            t = time.perf_counter()
            try:
                r = await client.get(daemon.health)
                r.raise_for_status()
                health.append((time.perf_counter() - t) * 1000)
            except httpx.HTTPError:
                timeouts += 1
            if sys is not None:
                t = time.perf_counter()
                with trio.move_on_after(timeout) as scope:
                    await sys.proc.getpid()
                if scope.cancelled_caught:
                    timeouts += 1
                else:
                    calls.append((time.perf_counter() - t) * 1000)
            await trio.sleep(interval)
    return {"health_ms": percentiles(health), "socket_syscall_ms": percentiles(calls), "timeouts": timeouts}


async def under_attack(daemon: Daemon, requests: int, programs: dict[str, str], root: Path) -> dict[str, Any]:
    import llmos
    from llmos.agents import SyscallError

    out: dict[str, Any] = {}
    async with llmos.connect(daemon.socket, daemon.token, name="bench", root=root) as sys:
        await sys.proc.getpid()
        out["idle"] = await probe(daemon, sys, requests)
        seconds = requests * 0.2 + 30  # the agents outlive the measurement (the machine may be slow)
        ended: dict[str, list[str]] = {}
        pids: list[int] = []
        async with llmos.connect(daemon.socket, daemon.token, name="attacker", root=root) as bad, \
                llmos.connect(daemon.socket, daemon.token, name="bomber", root=root) as bomber:
            for _ in range(2):
                pids.append(await bad.proc.spawn(programs["busy"]))
            pids.append(await bad.proc.spawn(programs["race"], str(seconds)))
            bomb = await bomber.proc.spawn(programs["forkbomb"], "spawn", "6", "3", str(seconds))  # its own session's share

            async def respawning(name: str, *args: str) -> None:
                quota = {"max_memory_mb": 512} if name == "hog" else None
                while True:
                    try:
                        status = await bad.proc.wait(await bad.proc.spawn(programs[name], *args, quota=quota))
                    except SyscallError as exc:
                        ended.setdefault(name, []).append(f"spawn: {exc.errno.value}")
                        await trio.sleep(0.5)
                        continue
                    label = name if not args else f"{name} {args[0]}"
                    ended.setdefault(label, []).append(f"{status.exit_code}: {status.reason.splitlines()[-1][:80]}"
                                                       + (f" -> {status.result}" if status.result else ""))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(respawning, "hog")
                nursery.start_soon(respawning, "segfault")
                nursery.start_soon(respawning, "forkbomb", "os")
                await trio.sleep(2)  # all of it running
                out["attacked"] = await probe(daemon, sys, requests)
                nursery.cancel_scope.cancel()
            ps = await bad.proc.ps()
            out["processes_during_attack"] = sum(1 for p in ps if p.state.value != "ZOMBIE")
            try:
                await bomber.proc.kill(bomb)
            except SyscallError:
                pass  # it ended by itself (its sleep ran out)
            bombed = await bomber.proc.wait(bomb)
            ended["forkbomb spawn"] = [f"{bombed.exit_code}: {bombed.reason.splitlines()[-1][:80]}"]
            for pid in pids:
                try:
                    await bad.proc.kill(pid)
                except SyscallError:
                    pass
            for pid in pids:
                status = await bad.proc.wait(pid)
                ended.setdefault(status.name, []).append(
                    f"{status.exit_code}: {status.reason.splitlines()[-1][:80]}" + (f" -> {status.result}" if status.result else "")
                )
        out["hostile_ended"] = {name: sorted(set(lines))[:4] for name, lines in ended.items()}
    return out


async def inprocess_busy(daemon: Daemon, requests: int, programs: dict[str, str], root: Path) -> dict[str, Any]:
    import llmos

    async with llmos.connect(daemon.socket, daemon.token, name="attacker", root=root) as bad:
        with trio.move_on_after(2):
            await bad.proc.spawn(programs["busy"])
    return {"attacked": await probe(daemon, None, requests)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmos bench isolation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--compare-inprocess", action="store_true")
    parser.add_argument("--skip-start", action="store_true", help="only the part with the daemon")
    parser.add_argument("--daemon-nice", type=int, default=0,
                        help="start the daemon at this niceness (negative needs privilege): on a machine shared with "
                             "other heavy work, shows the daemon's own latency rather than the machine's queue")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    folder = Path(tempfile.mkdtemp(prefix="llmos-bench-iso-"))
    programs = write_programs(folder)
    root = folder / "root"
    root.mkdir()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
    try:
        if not args.skip_start:
            results.update(trio.run(starts_and_memory, args.model, args.starts, args.workers, programs))
        extra = ["--no-persist"] + (["--model", args.model] if args.model else [])
        daemon = Daemon(extra, args.daemon_nice)
        results["daemon_nice"] = args.daemon_nice
        try:
            results["daemon"] = trio.run(under_attack, daemon, args.requests, programs, root)
        finally:
            daemon.stop()
        if args.compare_inprocess:
            daemon = Daemon([*extra, "--isolation", "inprocess-trusted"], args.daemon_nice)
            try:
                results["daemon_inprocess_trusted"] = trio.run(inprocess_busy, daemon, min(args.requests, 20), programs, root)
            finally:
                daemon.stop(kill=True)  # a busy loop in its event loop: SIGTERM cannot be handled
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    render(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def render(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "start_to_first_syscall_ms" in results:
        t = Table(title="worker start (ms) and memory (MB)", box=None)
        for col in ("figure", "p50", "p99", "max", "n"):
            t.add_column(col, justify="left" if col == "figure" else "right")
        for key in ("start_to_first_syscall_ms", "spawn_to_reaped_ms"):
            r = results[key]
            t.add_row(key, str(r["p50"]), str(r["p99"]), str(r["max"]), str(r["n"]))
        mem = results["worker_memory_mb"]
        for key in ("rss", "pss", "private"):
            r = mem[key]
            t.add_row(f"worker {key} MB", str(r["p50"]), str(r["p99"]), str(r["max"]), str(r["n"]))
        t.add_row("template rss MB", str(mem["template_rss"]), "", "", "1")
        console.print(t)
    d = results["daemon"]
    nice = f", daemon at nice {results['daemon_nice']}" if results.get("daemon_nice") else ""
    t = Table(title=f"the daemon idle vs under hostile agents (ms{nice})", box=None)
    for col in ("phase", "/health p50", "/health p99", "/health max", "syscall p50", "syscall p99", "timeouts"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    phases = [("idle", d["idle"]), ("hostile agents", d["attacked"])]
    if "daemon_inprocess_trusted" in results:
        phases.append(("busy loop, inprocess-trusted", results["daemon_inprocess_trusted"]["attacked"]))
    for name, r in phases:
        h, s = r["health_ms"], r["socket_syscall_ms"]
        t.add_row(name, str(h["p50"]), str(h["p99"]), str(h["max"]), str(s["p50"]), str(s["p99"]), str(r["timeouts"]))
    console.print(t)
    console.print(f"processes alive during the attack: {d['processes_during_attack']}")
    for name, lines in d["hostile_ended"].items():
        console.print(f"  {name}: {'; '.join(lines)}")


if __name__ == "__main__":
    sys.exit(main())
