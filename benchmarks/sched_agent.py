"""The agent `llmos bench sched` runs: a conversation of fixed-length turns, optionally
blocking in a syscall between them (standing in for a tool call: the process is off the
model, keeping its KV cache, while it waits)."""

from __future__ import annotations

import time


async def main(sys, args: list[str]) -> dict:
    prompt, rounds, tokens, tool_seconds = args[0], int(args[1]), int(args[2]), float(args[3])
    messages = [{"role": "user", "content": prompt}]
    ttfts, generated = [], 0
    started = time.monotonic()
    for turn in range(rounds):
        reply = await sys.llm.chat(messages, max_tokens=tokens, ignore_eos=True)
        ttfts.append(reply.ttft)
        generated += reply.usage.completion_tokens
        messages += [{"role": "assistant", "content": reply.content}, {"role": "user", "content": "Go on."}]
        if tool_seconds > 0 and turn < rounds - 1:
            await sys.sleep(tool_seconds)
    return {"ttfts": ttfts, "tokens": generated, "seconds": time.monotonic() - started}
