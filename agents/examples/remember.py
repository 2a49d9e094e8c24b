"""A conversation that outlives the process and the kernel: chat over a named memory.

    llmos run remember "My sister's name is Ingrid."
    llmos run remember "What is my sister's name?"
    llmos run remember --memory work "The review is on Friday."

Each run attaches the named memory (`remember` unless --memory says otherwise), so it goes on
with the same conversation. The agent sends only the new message (`mem.chat`); the kernel keeps
the history as pages, evicts what no longer fits the resident budget to the vector store, and
pages back in what the new message needs. The memory lives under the llmos data directory
(LLMOS_HOME), or on the chroma server named by LLMOS_CHROMA_URL.
"""

from __future__ import annotations

SYSTEM = "You are a helpful assistant with a long memory. Answer briefly, using what you were told."
DEFAULT_MEMORY = "remember"


async def main(sys, args: list[str]) -> str:
    name = DEFAULT_MEMORY
    if len(args) >= 2 and args[0] == "--memory":
        name, args = args[1], args[2:]
    message = " ".join(args) or "What do you remember about me?"
    if await sys.mem.attach(name) == 0:  # a new memory: its system prompt is pinned once
        await sys.mem.store(SYSTEM, role="system", pin=True)
    reply = await sys.mem.chat(message, max_tokens=96)
    st = await sys.mem.stat(pages=False)
    await sys.log(
        f"memory {name}: {st.pages} pages ({st.resident_pages} resident, {st.evicted_pages} evicted); "
        f"this turn paged in {len(reply.memory.faulted)}, reused {reply.usage.cached_tokens} cached tokens"
    )
    return reply.content
