"""Question answering over a folder of documents, through the knowledge base.

    llmos run kbqa docs/ "How do I rotate the audit log?"
    llmos run kbqa --collection handbook docs/ "Who approves expenses?"

Ingests the folder's text and markdown files (chunked, embedded, stored in chromadb; a file
ingested before is replaced, so re-running after an edit is right), retrieves the chunks
closest in meaning to the question and has the model answer from them alone, naming its
sources. Returns {"answer", "sources", "hits"}.
"""

from __future__ import annotations

TOP_K = 3
MIN_SCORE = 0.2  # below this a chunk is not about the question at all
SYSTEM = (
    "Answer the question using only the excerpts given. Answer in one or two sentences. "
    "If the excerpts do not contain the answer, say that you do not know."
)


async def main(sys, args: list[str]) -> dict:
    collection = "default"
    if len(args) >= 2 and args[0] == "--collection":
        collection, args = args[1], args[2:]
    if len(args) < 2:
        raise ValueError("usage: kbqa [--collection NAME] FOLDER QUESTION")
    folder, question = args[0], " ".join(args[1:])

    ingested = await sys.kb.ingest(folder, collection=collection)
    await sys.log(f"ingested {len(ingested.sources)} documents, {ingested.chunks} chunks into {collection!r}")
    hits = await sys.kb.search(question, k=TOP_K, collection=collection, min_score=MIN_SCORE)
    if not hits:
        return {"answer": "The documents say nothing about this.", "sources": [], "hits": []}

    excerpts = "\n\n".join(f"[{h.source}] {h.text}" for h in hits)
    reply = await sys.llm.chat(
        f"Excerpts:\n{excerpts}\n\nQuestion: {question}", system=SYSTEM, max_tokens=120, stop=["\n\n"]
    )
    sources = list(dict.fromkeys(h.source for h in hits))
    return {
        "answer": reply.content.strip(),
        "sources": sources,
        "hits": [{"source": h.source, "heading": h.heading, "score": h.score} for h in hits],
    }
