"""The knowledge base on the real stack: all-MiniLM-L6-v2 embeddings in a real chromadb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from conftest import kernel_with

from llmos.abi.errors import Errno, SyscallError
from llmos.kernel.kb import KnowledgeBase, chunk_text
from llmos.kernel.memory.embeddings import Embedder
from llmos.kernel.proc.capabilities import Capabilities
from llmos.runtime import local_handle

DOCS = {
    "garden/tomatoes.md": """# Growing tomatoes

Tomatoes need at least six hours of direct sunlight a day. Water them deeply twice a week,
at the base of the plant, and keep the leaves dry to avoid blight.

## Pruning

Pinch off the suckers that grow between the main stem and the branches.
""",
    "garden/compost.txt": """Compost turns kitchen scraps and garden waste into soil.
Mix green material (vegetable peels, grass) with brown material (dry leaves, cardboard),
keep the heap moist like a wrung-out sponge and turn it every few weeks.""",
    "space/mars.md": """# Mars

Mars is the fourth planet from the Sun. Its red colour comes from iron oxide dust.
A day on Mars lasts 24 hours and 37 minutes; a year lasts 687 Earth days.
Olympus Mons, a shield volcano on Mars, is the tallest mountain in the solar system.
""",
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture
def docs_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "outside.md").write_text("# Secret\nThe launch code is 1234.")
    os.symlink(tmp_path / "outside.md", root / "garden" / "sneaky.md")
    return root


def run_in(root: Path, embedder: Embedder, fn):
    async def main(backend):
        async with kernel_with(backend) as kernel:
            kernel.kb = KnowledgeBase(embedder)
            box = local_handle(kernel, kernel.session("kb", Capabilities(fs_root=root)))
            return await fn(kernel, box)

    return main


async def errno_of(coro) -> Errno:
    with pytest.raises(SyscallError) as info:
        await coro
    return info.value.errno


def test_chunking_follows_headings_and_bounds_size():
    text = "# Intro\n\nShort intro.\n\n## Details\n\n" + " ".join(f"Sentence number {i} is here." for i in range(200))
    chunks = chunk_text(text, "doc.md", size=300)
    assert chunks[0].heading == "Intro" and chunks[0].text == "Short intro."
    assert all(c.heading == "Details" for c in chunks[1:])
    assert all(len(c.text) <= 300 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    joined = " ".join(c.text for c in chunks[1:])
    assert "Sentence number 0 is here." in joined and "Sentence number 199 is here." in joined
    assert chunk_text("x" * 1000, "long", size=300)[0].text == "x" * 300  # a word longer than a chunk is cut
    assert chunk_text("", "empty") == []


def test_ingest_and_search_by_meaning(tiny_backend, embedder, docs_root):
    async def body(kernel, box):
        ingested = await box.kb.ingest("garden", "space/mars.md", collection="t-search")
        again = await box.kb.ingest("space", collection="t-search")  # same source again: replaced
        return {
            "ingested": ingested,
            "again": again,
            "water": await box.kb.search("How often should I water tomato plants?", k=3, collection="t-search"),
            "volcano": await box.kb.search("highest volcano in the solar system", k=2, collection="t-search"),
            "strict": await box.kb.search("highest volcano", collection="t-search", min_score=0.99),
            "listed": await box.kb.list(),
            "empty": await box.kb.search("anything", collection="t-never-made"),
            "escape": await errno_of(box.kb.ingest("../outside.md", collection="t-search")),
            "missing": await errno_of(box.kb.ingest("nope.md", collection="t-search")),
            "bad_name": await errno_of(box.kb.ingest("garden", collection="Bad Name!")),
            "nothing": await errno_of(box.call("kb.ingest")),
            "dropped": await box.kb.drop("t-search"),
            "after_drop": await box.kb.search("tomatoes", collection="t-search"),
        }

    r = trio.run(run_in(docs_root, embedder, body), tiny_backend)
    sources = {s.source: s.chunks for s in r["ingested"].sources}
    assert set(sources) == {"garden/tomatoes.md", "garden/compost.txt", "space/mars.md"}
    assert all(n >= 1 for n in sources.values())
    assert any("sneaky.md" in s for s in r["ingested"].skipped)  # the symlink out of the root
    assert r["listed"]["t-search"] == sum(sources.values())  # re-ingesting mars did not duplicate it
    water, volcano = r["water"], r["volcano"]
    assert water[0].source == "garden/tomatoes.md" and "twice a week" in water[0].text
    assert water[0].score > water[-1].score and 0 < water[0].score <= 1
    assert volcano[0].source == "space/mars.md" and volcano[0].heading == "Mars"
    assert r["strict"] == [] and r["empty"] == []
    assert r["escape"] is Errno.EPERM and r["missing"] is Errno.ENOENT
    assert r["bad_name"] is r["nothing"] is Errno.EINVAL
    assert r["dropped"] is True and r["after_drop"] == []


def test_ingest_texts_and_capabilities(tiny_backend, embedder, docs_root):
    async def body(kernel, box):
        await box.kb.ingest(texts=[{"source": "note-1", "text": "The wifi password is on the fridge."}], collection="t-notes")
        reader = local_handle(kernel, kernel.session("reader", Capabilities(allow=("kb.search",), fs_root=docs_root)))
        hits = await reader.kb.search("where is the wifi password", collection="t-notes")
        denied = await errno_of(reader.kb.ingest(texts=[{"source": "x", "text": "y"}], collection="t-notes"))
        return hits, denied

    hits, denied = trio.run(run_in(docs_root, embedder, body), tiny_backend)
    assert hits[0].source == "note-1" and hits[0].score > 0.5
    assert denied is Errno.EPERM


def test_kbqa_example_answers_from_documents(real_backend, embedder, docs_root):
    async def main():
        async with kernel_with(real_backend) as kernel:
            kernel.kb = KnowledgeBase(embedder)
            sh = local_handle(kernel, kernel.session("qa", Capabilities(fs_root=docs_root)))
            pid = await sh.proc.spawn("kbqa", "--collection", "t-kbqa", "space", "How long is a day on Mars?")
            return await sh.proc.wait(pid)

    status = trio.run(main)
    assert status.exit_code == 0, status.reason
    assert status.result["sources"][0] == "space/mars.md"
    assert "24" in status.result["answer"]  # the model answers from the retrieved chunk
