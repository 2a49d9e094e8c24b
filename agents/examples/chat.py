"""A chat agent: answers a question, then a follow-up in the same conversation.

    llmos run chat "Why is the sky blue?"

The second turn extends the first, so the kernel reuses the process's KV cache for the whole
first exchange and prefills only the new message.
"""

from __future__ import annotations

SYSTEM = "You are a concise, helpful assistant."
DEFAULT_QUESTION = "What are three good habits for writing clear code?"


async def main(sys, args: list[str]) -> str:
    question = " ".join(args) or DEFAULT_QUESTION
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    first = await sys.llm.chat(messages, max_tokens=96)
    await sys.log(f"answer: {first.content}")
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "Now say it in one short sentence."},
    ]
    second = await sys.llm.chat(messages, max_tokens=48)
    await sys.log(f"in short: {second.content}  (reused {second.usage.cached_tokens} cached tokens)")
    return second.content
