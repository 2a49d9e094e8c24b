"""Tries to act as another process, by every means a worker has: `impersonate VICTIM_PID`.
Each attempt calls fs.list (which this process is not allowed) or acts on the victim; returns
each outcome: "OK" (it worked: a breach), or the errno / exception it got."""

import os
import socket
import stat
import time

from llmos.agents import SyscallError


async def outcome(coro):
    try:
        await coro
        return "OK"
    except SyscallError as exc:
        return exc.errno.value
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__


def answers(fd):
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        sock.setblocking(False)
        try:
            sock.recv(65536)  # whatever waits there already (a wakeup pair's bytes) is not an answer
        except BlockingIOError:
            pass
        sock.send(b'{"id": 1, "op": "call", "name": "fs.list", "args": {}}\n')
        time.sleep(0.2)
        reply = sock.recv(65536)
        return b'"result"' in reply or b'"error"' in reply
    except OSError:
        return False
    finally:
        sock.close()


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
    # Other descriptors: does any socket besides its channel (3) answer a call like a kernel?
    out["other fds answering"] = [fd for fd in sorted(int(fd) for fd in os.listdir("/proc/self/fd")) if fd > 3 and answers(fd)]
    # A second exit frame claims nothing: the channel, not the frame, says whose exit it is.
    out["still allowed after all that"] = await outcome(sys.log("still here"))
    return out
