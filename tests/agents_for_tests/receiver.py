"""Receives messages and returns them: `receiver N [TAG]`."""


async def main(sys, args):
    n = int(args[0]) if args else 1
    tag = args[1] if len(args) > 1 else None
    got = []
    for _ in range(n):
        msg = await sys.ipc.recv(tag=tag)
        got.append({"from": msg.sender, "tag": msg.tag, "body": msg.body})
    return got
