"""The `llmos` command: run, demo, shell, daemon, bench.

The wiring of the shell: it turns flags into a KernelConfig and, for the commands that run a
kernel in this process (run, demo, shell --local), hands the client modules a `Boot` from
shell/boot.py; the daemon and the benchmarks are imported only when asked for. So `llmos shell`
and `llmos run --remote` load the ABI and the SDK, not the kernel (or torch).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llmos.abi.kstat import SCHED_POLICIES
from llmos.abi.mem import PAGE_POLICIES
from llmos.config import ISOLATIONS, WEIGHT_MODES, KernelConfig


def _kernel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kernel")
    g.add_argument("--model", default=None, help="model: 'smollm2' (default), a local path or a Hugging Face id")
    g.add_argument("--weights", choices=WEIGHT_MODES, default=None,
                   help="weight format: fp32 (default, exact), fp16, bf16, int8 / int4 (weight-only), w8a8 (LLMOS_WEIGHTS)")
    g.add_argument("--device", choices=["cpu", "cuda"], default=None, help="where the model runs (LLMOS_DEVICE; default cpu)")
    g.add_argument("--policy", choices=SCHED_POLICIES, default="rr", help="scheduling policy (default rr)")
    g.add_argument("--max-batch", type=int, default=32, help="sequences decoded per forward pass")
    g.add_argument("--quantum", type=int, default=32, help="tokens per time slice before preemption")
    g.add_argument("--kv-budget-mb", type=float, default=4096.0, help="retained KV cache of all processes, MB")
    g.add_argument("--kv-eviction", choices=["drop", "compress"], default="drop", help="what eviction does to a KV cache")
    p_ = p.add_argument_group("processes")
    p_.add_argument("--isolation", choices=ISOLATIONS, default=None,
                    help="how agent programs run: 'workers' (default: each in its own confined OS process) or "
                         "'inprocess-trusted' (inside the kernel's process, unconfined: trusted code only)")
    p_.add_argument("--max-processes", type=int, default=1024, help="size of the process table (1024)")
    p_.add_argument("--max-children", type=int, default=64, help="live children per process (64)")
    p_.add_argument("--max-session-processes", type=int, default=256,
                    help="live processes started from one session or client, all generations (256)")
    p_.add_argument("--worker-memory-mb", type=int, default=2048,
                    help="address space of an agent worker unless its quota says less (2048)")
    m = p.add_argument_group("memory (defaults from LLMOS_MEM_* and LLMOS_CHROMA_URL)")
    m.add_argument("--mem-page-tokens", type=int, help="tokens per context page (128)")
    m.add_argument("--mem-budget", type=int, help="resident tokens per process memory (2048)")
    m.add_argument("--mem-global-budget", type=int, help="resident tokens of all memories together (65536)")
    m.add_argument("--mem-policy", choices=PAGE_POLICIES, help="page replacement policy (clock)")
    m.add_argument("--chroma-url", help="swap pages to this chroma server instead of the embedded store")


def config_from(args: argparse.Namespace) -> KernelConfig:
    cfg = KernelConfig(
        policy=args.policy,
        max_batch=args.max_batch,
        quantum=args.quantum,
        kv_budget_mb=args.kv_budget_mb,
        kv_eviction=args.kv_eviction,
        max_processes=args.max_processes,
        max_children=args.max_children,
        max_session_processes=args.max_session_processes,
        worker_memory_mb=args.worker_memory_mb,
    )
    if args.isolation:
        cfg.isolation = args.isolation
    if args.model:
        cfg.model = args.model
    if args.weights:
        cfg.weights = args.weights
    if args.device:
        cfg.device = args.device
    for flag, name in (("mem_page_tokens", "page_tokens"), ("mem_budget", "budget"), ("mem_global_budget", "global_budget"),
                       ("mem_policy", "policy"), ("chroma_url", "chroma_url")):
        if getattr(args, flag) is not None:
            setattr(cfg.memory, name, getattr(args, flag))
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmos", description="LLM agents as processes sharing one local model.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one agent program and stream its output")
    run.add_argument("program", help="path/to/agent.py, module[:function] or a bundled example name")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the program")
    run.add_argument("--quiet", action="store_true", help="print only the program's result")
    run.add_argument("--remote", action="store_true", help="run it here against the running daemon's kernel")
    run.add_argument("--socket", type=Path, default=None, help="the daemon's socket (with --remote)")
    _kernel_args(run)

    demo = sub.add_parser("demo", help="several agents at once on the local model, streamed live")
    demo.add_argument("--agents", type=int, default=0, help="run N question-answering agents instead of the examples")
    demo.add_argument("--max-tokens", type=int, default=96, help="token limit per answer (with --agents)")
    demo.add_argument("--baseline", action="store_true", help="replay the same LLM calls one generate() at a time")
    demo.add_argument("--plain", action="store_true", help="no live view: print results only")
    demo.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    _kernel_args(demo)

    shell = sub.add_parser("shell", help="interactive shell on the running daemon (--local: on a kernel of its own)")
    shell.add_argument("--local", action="store_true", help="boot a kernel inside the shell instead of using the daemon")
    shell.add_argument("--socket", type=Path, default=None, help="the daemon's socket (default: in the data dir)")
    _kernel_args(shell)

    daemon = sub.add_parser("daemon", help="run the kernel headless: Unix socket, OpenAI-compatible HTTP, persistence")
    daemon.add_argument("--socket", type=Path, default=None, help="socket path (default: DATA/daemon.sock)")
    daemon.add_argument("--http", default="127.0.0.1:8470", metavar="HOST:PORT", help="HTTP listener (default 127.0.0.1:8470)")
    daemon.add_argument("--no-http", action="store_true", help="no HTTP listener")
    daemon.add_argument("--resume", action="store_true", help="start restored processes again at once (default: STOPPED until cont)")
    daemon.add_argument("--max-clients", type=int, default=256, help="authenticated clients at once, per listener")
    daemon.add_argument("--max-pending", type=int, default=64,
                        help="socket connections not yet authenticated (the oldest is dropped for a newcomer)")
    daemon.add_argument("--max-inflight", type=int, default=32, help="calls in flight per client")
    daemon.add_argument("--max-frame", type=int, default=8 * 2**20, help="largest request frame in bytes")
    daemon.add_argument("--no-persist", action="store_true", help="keep no journal (nothing survives a restart)")
    daemon.add_argument("--fsync", action="store_true", help="journal commits survive power loss, not only a crash")
    _kernel_args(daemon)

    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("which", choices=["sched", "syscalls", "memory", "isolation", "structured", "serve", "quality"], help="which benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    import trio

    if args.command == "run" and args.remote:
        from llmos.shell.run import run_remote

        return trio.run(run_remote, args.program, args.args, args.quiet, args.socket)
    if args.command == "run":
        from llmos.shell.boot import booter
        from llmos.shell.run import run_program

        return trio.run(run_program, booter(config_from(args)), args.program, args.args, args.quiet)
    if args.command == "daemon":
        return _daemon(args)
    if args.command == "demo":
        from llmos.shell.boot import booter
        from llmos.shell.demo import demo

        return trio.run(demo, booter(config_from(args)), args)
    if args.command == "shell":
        from llmos.shell.shell import run_shell

        local = None
        if args.local:
            from llmos.shell.boot import booter

            local = booter(config_from(args))
        return trio.run(run_shell, args.socket, local)
    if args.command == "bench":
        if args.which == "memory":
            from llmos.benchmarks import memory

            return memory.main(args.rest)
        if args.which == "structured":
            from llmos.benchmarks import structured

            return structured.main(args.rest)
        if args.which == "serve":
            from llmos.benchmarks import serve

            return serve.main(args.rest)
        if args.which == "quality":
            from llmos.benchmarks import quality

            return quality.main(args.rest)
        if args.which == "syscalls":
            from llmos.benchmarks import syscalls

            return syscalls.main(args.rest)
        if args.which == "isolation":
            from llmos.benchmarks import isolation

            return isolation.main(args.rest)
        from llmos.benchmarks import sched

        return sched.main(args.rest)
    return 2


def _daemon(args: argparse.Namespace) -> int:
    import trio

    from llmos.config import data_dir
    from llmos.kernel.model.remote import RemoteModelError
    from llmos.servers.daemon import DaemonError, DaemonSettings, run


    http = None
    if not args.no_http:
        host, _, port = args.http.rpartition(":")
        if not host or not port.isdigit():
            print(f"llmos daemon: --http wants HOST:PORT, got {args.http!r}", file=sys.stderr)
            return 2
        http = (host.strip("[]"), int(port))
    settings = DaemonSettings(
        home=data_dir(), socket=args.socket, http=http, max_frame=args.max_frame, max_clients=args.max_clients,
        max_pending=args.max_pending,
        max_inflight=args.max_inflight, resume=args.resume, persist=not args.no_persist,
        synchronous="FULL" if args.fsync else "NORMAL",
    )
    try:
        return trio.run(run, config_from(args), settings, lambda text: print(text, flush=True))
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # a start-up failure inside the daemon's nurseries
        if isinstance(exc, (DaemonError, RemoteModelError, OSError)):
            print(f"llmos daemon: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
