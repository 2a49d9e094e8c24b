"""Calls a tool forever (stopped only by its quota or a kill)."""


async def main(sys, args):
    n = 0
    while True:
        await sys.call("calc", expression=f"{n} + 1")
        n += 1
