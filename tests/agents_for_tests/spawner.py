"""Spawns each program it is given; returns, for each, "OK" or the errno the spawn got."""

from llmos.agents import SyscallError


async def main(sys, args):
    out = {}
    for spec in args:
        try:
            pid = await sys.proc.spawn(spec)
            await sys.proc.wait(pid)
            out[spec] = "OK"
        except SyscallError as exc:
            out[spec] = exc.errno.value
    return out
