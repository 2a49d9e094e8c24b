"""Tries to act as another process, by every means a worker has: `impersonate VICTIM_PID`.
Each attempt calls fs.list (which this process is not allowed) or acts on the victim; returns
each outcome: "OK" (it worked: a breach), or the errno / exception it got."""

import os

from llmos.agents import SyscallError


async def outcome(coro):
    try:
        await coro
        return "OK"
    except SyscallError as exc:
        return exc.errno.value
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__


async def main(sys, args):
    victim = int(args[0])
    t = sys.transport
    out = {"own fs.list": await outcome(sys.fs.list("."))}
    real = t.pid
    t.pid = victim  # the handle's idea of who it is: not the kernel's
    out["handle pid set to victim"] = await outcome(sys.fs.list("."))
    t.pid = real
    out["frame with a pid field"] = await outcome(t._request({"op": "call", "name": "fs.list", "args": {}, "pid": victim}, None, None))
    out["args with a pid"] = await outcome(sys.call("fs.list", path=".", pid=victim))
    out["hello on the channel"] = await outcome(t._request({"op": "hello", "token": "x", "name": "victim"}, None, None))
    out["kill the victim"] = await outcome(sys.proc.kill(victim))
    out["stop the victim"] = await outcome(sys.proc.signal(victim, "stop"))
    out["nice the victim"] = await outcome(sys.proc.nice(19, pid=victim))
    out["wait for the victim"] = await outcome(sys.proc.wait(victim, timeout=0.1))
    out["garbage frame"] = await outcome(t._request({"op": "call", "name": 7}, None, None))
    # Other descriptors: only its channel (3) and stdio are open.
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    out["other fds"] = [fd for fd in fds if fd not in (0, 1, 2, 3) and os.path.exists(f"/proc/self/fd/{fd}")]
    # A second exit frame claims nothing: the channel, not the frame, says whose exit it is.
    out["still allowed after all that"] = await outcome(sys.log("still here"))
    return out
