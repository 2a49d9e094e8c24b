"""A fork bomb: `forkbomb spawn DEPTH FANOUT` spawns FANOUT copies of itself, each one level
shallower, and returns what happened; `forkbomb os` tries os.fork() in a loop."""

import os

from llmos.agents import SyscallError


async def main(sys, args):
    mode = args[0] if args else "spawn"
    if mode == "os":
        try:
            pids = [os.fork() for _ in range(64)]
        except OSError as exc:
            return {"fork": type(exc).__name__, "errno": exc.errno}
        if 0 in pids:
            os._exit(0)
        return {"fork": "succeeded", "children": len(pids)}
    depth, fanout = int(args[1]), int(args[2])
    started, refused = 0, []
    if depth > 0:
        for _ in range(fanout):
            try:
                await sys.proc.spawn(__file__, "spawn", str(depth - 1), str(fanout))
                started += 1
            except SyscallError as exc:
                refused.append(exc.errno.value)
    await sys.sleep(30)  # stay alive: the bomb's point is to fill the table
    return {"started": started, "refused": refused}
