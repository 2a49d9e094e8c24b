"""Sends its arguments to its parent, one message each, tagged "arg"."""


async def main(sys, args):
    me = await sys.proc.getpid()
    for arg in args:
        await sys.ipc.send(me.ppid, arg, tag="arg")
    return len(args)
