"""The agent `llmos bench syscalls` runs in a worker: `roundtrip_agent SYSCALL CALLS` times each
call of a no-argument syscall from the program's side (through its channel to the kernel) and
returns the samples in microseconds."""

from __future__ import annotations

import time


async def main(sys, args: list[str]) -> list[float]:
    name, calls = args[0], int(args[1])
    for _ in range(min(200, calls)):  # warm up
        await sys.call(name)
    samples = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        await sys.call(name)
        samples.append((time.perf_counter_ns() - t) / 1000)
    return samples
