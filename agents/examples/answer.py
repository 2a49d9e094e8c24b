"""Answer one question and return the answer: the worker that `fanout` spawns."""

from __future__ import annotations


async def main(sys, args: list[str]) -> str:
    question = " ".join(args)
    if not question:
        raise ValueError("usage: answer QUESTION")
    reply = await sys.llm.chat(question, system="Answer in two or three sentences.", max_tokens=80)
    return reply.content
