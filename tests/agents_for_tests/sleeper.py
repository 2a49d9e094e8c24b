"""Sleeps for a long time (stopped by its wall-time quota)."""


async def main(sys, args):
    await sys.sleep(float(args[0]) if args else 3600)
    return "woke"
