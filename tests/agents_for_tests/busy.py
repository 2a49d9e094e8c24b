"""A busy loop that never makes a syscall: only its own process's limits can stop it."""


async def main(sys, args):
    x = 0
    while True:
        x += 1
