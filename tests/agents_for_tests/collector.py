"""Waits for a message tagged "start", then takes whatever else is in its mailbox; logs and
returns the bodies in the order it got them."""

from llmos.agents import SyscallError


async def main(sys, args):
    got = [(await sys.ipc.recv(tag="start")).body]
    while True:
        try:
            got.append((await sys.ipc.recv(timeout=0)).body)
        except SyscallError:
            break
    await sys.log(f"inbox: {got}")
    return got
