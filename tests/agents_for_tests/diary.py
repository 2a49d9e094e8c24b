"""Logs N numbered lines, then sleeps for an hour (alive when the daemon is killed)."""


async def main(sys, args):
    for i in range(int(args[0]) if args else 5):
        await sys.log(f"entry {i}")
    await sys.sleep(3600)
