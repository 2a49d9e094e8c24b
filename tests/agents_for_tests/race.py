"""The symlink race on fs.read / fs.write: `race SECONDS TARGET_DIR`.

In its root: `d/`, a folder holding `passwd` ("safe"), and `s`, a symlink to TARGET_DIR. A
thread swaps the two names back and forth, atomically (renameat2 RENAME_EXCHANGE: both names
always exist, so no half-done swap can stop the race), while the program reads and writes
d/passwd through the syscalls. Returns counts: reads and writes that went to the safe
file, that were refused, and that reached TARGET_DIR (leaks)."""

import ctypes
import os
import threading
import time

import trio

from llmos.agents import SyscallError

MIN_SWAPS = 200  # the race runs past SECONDS (up to 5x) until the swapper has done this many


AT_FDCWD, RENAME_EXCHANGE = -100, 2


def swap(stop, done):
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    while not stop.is_set():
        if renameat2(AT_FDCWD, b"d", AT_FDCWD, b"s", RENAME_EXCHANGE) == 0:
            done[0] += 1


async def main(sys, args):
    seconds, target = float(args[0]), args[1]
    os.makedirs("d", exist_ok=True)
    with open("d/passwd", "w") as f:
        f.write("safe")
    if not os.path.lexists("s"):
        os.symlink(target, "s")
    stop = threading.Event()
    counts = {"reads": 0, "safe_reads": 0, "leaked_reads": 0, "writes": 0, "refused": {}, "swaps": 0}
    swaps = [0]
    thread = threading.Thread(target=swap, args=(stop, swaps))
    thread.start()
    started = time.monotonic()
    try:
        while (now := time.monotonic() - started) < seconds or (swaps[0] < MIN_SWAPS and now < 5 * seconds):
            try:
                content = await sys.fs.read("d/passwd")
                counts["reads"] += 1
                if content in ("safe", "written"):
                    counts["safe_reads"] += 1
                else:
                    counts["leaked_reads"] += 1
            except SyscallError as exc:
                counts["refused"][exc.errno.value] = counts["refused"].get(exc.errno.value, 0) + 1
            try:
                await sys.fs.write("d/passwd", "written")
                counts["writes"] += 1
            except SyscallError as exc:
                counts["refused"][exc.errno.value] = counts["refused"].get(exc.errno.value, 0) + 1
            await trio.lowlevel.checkpoint()
    finally:
        stop.set()
        thread.join()
    counts["swaps"] = swaps[0]
    return counts
