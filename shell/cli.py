"""The `llmos` command: run, demo, shell, bench."""

from __future__ import annotations

import argparse
import os
import sys

from llmos.config import KernelConfig
from llmos.kernel.scheduler import POLICIES


def _kernel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kernel")
    g.add_argument("--model", default=None, help="model: 'smollm2' (default), a local path or a Hugging Face id")
    g.add_argument("--policy", choices=POLICIES, default="rr", help="scheduling policy (default rr)")
    g.add_argument("--max-batch", type=int, default=32, help="sequences decoded per forward pass")
    g.add_argument("--quantum", type=int, default=32, help="tokens per time slice before preemption")
    g.add_argument("--kv-budget-mb", type=float, default=4096.0, help="retained KV cache of all processes, MB")
    g.add_argument("--kv-eviction", choices=["drop", "compress"], default="drop", help="what eviction does to a KV cache")


def config_from(args: argparse.Namespace) -> KernelConfig:
    cfg = KernelConfig(
        policy=args.policy,
        max_batch=args.max_batch,
        quantum=args.quantum,
        kv_budget_mb=args.kv_budget_mb,
        kv_eviction=args.kv_eviction,
    )
    if args.model:
        cfg.model = args.model
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmos", description="LLM agents as processes sharing one local model.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one agent program and stream its output")
    run.add_argument("program", help="path/to/agent.py, module[:function] or a bundled example name")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the program")
    run.add_argument("--quiet", action="store_true", help="print only the program's result")
    _kernel_args(run)

    demo = sub.add_parser("demo", help="several agents at once on the local model, streamed live")
    demo.add_argument("--agents", type=int, default=0, help="run N question-answering agents instead of the examples")
    demo.add_argument("--max-tokens", type=int, default=96, help="token limit per answer (with --agents)")
    demo.add_argument("--baseline", action="store_true", help="replay the same LLM calls one generate() at a time")
    demo.add_argument("--plain", action="store_true", help="no live view: print results only")
    demo.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    _kernel_args(demo)

    shell = sub.add_parser("shell", help="interactive shell")
    _kernel_args(shell)

    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("which", choices=["sched", "syscalls", "memory"], help="which benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    import trio

    if args.command == "run":
        from llmos.shell.run import run_program

        return trio.run(run_program, config_from(args), args.program, args.args, args.quiet)
    if args.command == "demo":
        from llmos.shell.demo import demo

        return trio.run(demo, config_from(args), args)
    if args.command == "shell":
        from llmos.shell.shell import run_shell

        return trio.run(run_shell, config_from(args))
    if args.command == "bench":
        if args.which == "memory":
            from llmos.benchmarks import memory

            return memory.main(args.rest)
        if args.which == "syscalls":
            from llmos.benchmarks import syscalls

            return syscalls.main(args.rest)
        from llmos.benchmarks import sched

        return sched.main(args.rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
