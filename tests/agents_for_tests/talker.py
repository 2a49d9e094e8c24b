"""Generates a long answer (used to kill a process mid-generation)."""


async def main(sys, args):
    n = int(args[0]) if args else 2000
    reply = await sys.llm.chat("Tell me a very long story.", max_tokens=n)
    return reply.content
