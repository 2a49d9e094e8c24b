"""Thousands of malformed frames at the daemon: each refused with an errno and a reason, the
connection and the daemon go on, and the kernel still answers well-formed calls afterwards."""

from __future__ import annotations

import json
import random

import trio
from daemon_util import RawClient, daemon_with

import llmos

FRAMES = 1200
MAX_FRAME = 65536


def malformed(rng: random.Random, i: int) -> tuple[bytes, set[str]]:
    """One bad frame (without its newline) and the errnos that may answer it."""
    kind = i % 12
    if kind == 0:  # noise, including invalid UTF-8 and NUL bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b"?"), {"EINVAL"}
    if kind == 1:  # JSON that is not an object
        return rng.choice([b"[]", b"42", b'"call"', b"null", b"true", b"[1,2,{}]", b"1e999"]), {"EINVAL"}
    if kind == 2:  # truncated JSON
        good = json.dumps({"id": i, "op": "call", "name": "proc.ps", "args": {}}).encode()
        return good[: rng.randrange(1, len(good) - 1)], {"EINVAL"}
    if kind == 3:  # ids that are not ids
        bad_id = rng.choice(["7", 1.5, -1, True, None, [], {}, 2**60, "x" * 50])
        return json.dumps({"id": bad_id, "op": "call", "name": "proc.ps"}).encode(), {"EINVAL"}
    if kind == 4:  # unknown or missing op, extra fields
        frame = rng.choice([{"id": i}, {"id": i, "op": "exec"}, {"id": i, "op": "call", "name": "proc.ps", "x": 1},
                            {"id": i, "op": 3}, {"id": i, "op": "call"}, {"id": i, "op": "call", "name": ""}])
        return json.dumps(frame).encode(), {"EINVAL"}
    if kind == 5:  # no such syscall
        name = rng.choice(["nope", "proc.spawnx", "llm", "../etc/passwd", "a" * 128, "fs.read\u0000", "proc.ps "])
        return json.dumps({"id": i, "op": "call", "name": name}).encode(), {"ENOSYS"}
    if kind == 6:  # arguments of the wrong shape
        args = rng.choice([
            {"pid": "one"}, {"seconds": -1}, {"seconds": "soon"}, {"messages": "hi"}, {"messages": []},
            {"messages": [{"role": "wizard", "content": "x"}]}, {"pid": 1, "signal": "hup"}, {"tail": 10**9},
        ])
        name = {"pid": "proc.kill", "seconds": "sleep", "messages": "llm.chat", "tail": "log.read"}[next(iter(args))]
        if name == "proc.kill" and "signal" in args:
            name = "proc.signal"
        return json.dumps({"id": i, "op": "call", "name": name, "args": args}).encode(), {"EINVAL"}
    if kind == 7:  # arguments that are not an object
        args = rng.choice([[1, 2], "x", 3, True])
        return json.dumps({"id": i, "op": "call", "name": "proc.ps", "args": args}).encode(), {"EINVAL"}
    if kind == 8:  # nesting deep enough to break a recursive parser
        depth = rng.randrange(2000, 30000)
        return b"[" * depth + b"]" * depth, {"EINVAL"}
    if kind == 9:  # numbers too long to convert
        return b'{"id": ' + b"9" * rng.randrange(5000, 20000) + b"}", {"EINVAL"}
    if kind == 10:  # over the frame size limit
        return json.dumps({"id": i, "op": "call", "name": "log", "args": {"message": "x" * (MAX_FRAME + rng.randrange(1, 20000))}}).encode(), {"E2BIG"}
    return json.dumps({"id": i, "op": "hello", "token": "again"}).encode(), {"EINVAL"}  # a second hello


def test_thousand_malformed_frames_are_refused(tiny_backend):
    rng = random.Random(7)

    async def main():
        async with daemon_with(tiny_backend, max_frame=MAX_FRAME) as d:
            raw = await RawClient.open(d.settings.socket_path)
            me = await raw.hello(d.token, "fuzz")
            answered: list[tuple[int, dict]] = []
            for i in range(FRAMES):
                frame, errnos = malformed(rng, i)
                await raw.send(frame + b"\n")
                reply = await raw.reply()
                assert reply is not None, f"connection closed after frame {i}: {frame[:80]!r}"
                err = reply.get("error")
                assert err is not None and err["errno"] in errnos, (i, frame[:80], reply)
                assert err["message"], reply
                answered.append((i, reply))
            # Clients that break the protocol in other ways; none of it reaches the kernel.
            for junk in (b"\xff" * 100 + b"\n", b'{"id": 1, "op": "call", "name": "proc.ps"}\n', b"no newline at all"):
                other = await RawClient.open(d.settings.socket_path)
                await other.send(junk)
                await other.close()
            wrong = await RawClient.open(d.settings.socket_path)
            await wrong.frame({"id": 1, "op": "hello", "token": "x" * 100})
            refused = await wrong.reply()
            # The same connection and a new one still work, and so does the model.
            await raw.frame({"id": 99999, "op": "call", "name": "proc.getpid"})
            still = await raw.reply()
            async with llmos.connect(d.settings.socket_path, d.token) as sys:
                reply = await sys.llm.chat("still there?", max_tokens=4)
            return answered, refused, still, me, reply, d.refused

    answered, refused, still, me, reply, count = trio.run(main)
    assert len(answered) == FRAMES >= 1000
    assert count >= FRAMES * 10 // 12  # refused at the frame level (the rest by dispatch)
    assert refused["error"]["errno"] == "EPERM"
    assert still == {"id": 99999, "result": {"pid": me["pid"], "ppid": 0, "name": "fuzz"}}
    assert reply.usage.completion_tokens >= 1
    # Replies name the frame when its id could be read, and say what was wrong.
    by_kind = {i % 12: r for i, r in answered}
    assert by_kind[0]["id"] is None and isinstance(by_kind[5]["id"], int)
    assert "nested too deeply" in by_kind[8]["error"]["message"]
    assert "limit" in by_kind[10]["error"]["message"]
