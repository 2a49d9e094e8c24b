"""Tries llm.chat without the capability; reports the errno it got."""


async def main(sys, args):
    try:
        await sys.llm.chat("hi", max_tokens=2)
    except sys_error() as exc:
        return exc.errno.value
    return "allowed"


def sys_error():
    from llmos.agents import SyscallError

    return SyscallError
