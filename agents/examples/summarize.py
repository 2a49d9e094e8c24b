"""Summarize a text file: summarize each chunk, then summarize the summaries (map-reduce).

    llmos run summarize README.md
"""

from __future__ import annotations

CHUNK_CHARS = 1500
SYSTEM = "You summarize text faithfully and briefly."


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Split on paragraph boundaries into pieces of about `size` characters."""
    pieces, current = [], ""
    for para in text.split("\n\n"):
        if current and len(current) + len(para) > size:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
        while len(current) > size:
            pieces.append(current[:size])
            current = current[size:]
    if current.strip():
        pieces.append(current)
    return pieces


async def main(sys, args: list[str]) -> str:
    if not args:
        raise ValueError("usage: summarize FILE")
    text = await sys.fs.read(args[0])
    parts = chunks(text)
    await sys.log(f"{args[0]}: {len(text)} characters in {len(parts)} chunks")
    notes = []
    for i, part in enumerate(parts, 1):
        reply = await sys.llm.chat(f"Summarize in two sentences:\n\n{part}", system=SYSTEM, max_tokens=80)
        notes.append(reply.content.strip())
        await sys.log(f"chunk {i}/{len(parts)}: {notes[-1]}")
    if len(notes) == 1:
        return notes[0]
    joined = "\n".join(f"- {n}" for n in notes)
    final = await sys.llm.chat(f"Combine these notes into one short summary:\n\n{joined}", system=SYSTEM, max_tokens=120)
    await sys.log(f"summary: {final.content}")
    return final.content
