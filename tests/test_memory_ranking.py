"""Fault ranking on the real embedder and a real chromadb: periods named in questions, BM25
from FTS5, fusion, neighbours, admission by size, dated prompts, turn-aligned cuts, the
benchmark's generated conversations. The LLM is the tiny llama (its words do not matter)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from test_memory import EMBEDDER, run

from llmos.benchmarks.dialogues import generate
from llmos.kernel.memory.index import Index
from llmos.kernel.memory.pagetable import Page, cut
from llmos.kernel.memory.prompt import assemble
from llmos.kernel.memory.ranking import Score
from llmos.kernel.memory.turn import admit
from llmos.kernel.memory.when import Period, day, periods


def ts(y: int, m: int, d: int) -> float:
    return datetime(y, m, d, 12).timestamp()


def test_periods_named_in_questions():
    assert periods("What did Maria start in June 2023?") == [Period("month", 2023, 6)]
    assert periods("What happened on 8 May 2023 and on March 3rd?") == [Period("day", 2023, 5, 8), Period("day", None, 3, 3)]
    assert periods("Where was she in 2021?") == [Period("year", 2021)]
    assert periods("Anything planned in early September?") == [Period("month", None, 9)]
    assert periods("How may I help? March on!") == []  # 'may' and 'march' alone are words, not months
    june = Period("month", 2023, 6)
    assert june.contains(ts(2023, 6, 30)) and not june.contains(ts(2023, 7, 1)) and not june.contains(ts(2022, 6, 5))
    assert Period("day", 2023, 5, 8).near(ts(2023, 5, 9), 1) and not Period("day", 2023, 5, 8).near(ts(2023, 5, 11), 1)
    assert day(ts(2023, 5, 8)) == "8 May 2023"
    times = np.array([ts(2022, 6, 5), ts(2023, 6, 30), ts(2023, 7, 1)])
    assert june.within(times).tolist() == [False, True, False]
    assert Period("month", None, 6).within(times).tolist() == [True, True, False]


def test_index_scores_words_and_meaning():
    index = Index()
    texts = ["Maria: we adopted a puppy named Biscuit", "Tim: the weather was awful", "Maria: Biscuit chewed my shoes"]
    for n, (text, vector) in enumerate(zip(texts, EMBEDDER.embed(texts))):
        index.add(n, text, vector)
    lexical = index.lexical(["biscuit"], 10)
    assert set(lexical) == {0, 2} and all(v > 0 for v in lexical.values())
    assert index.lexical(["adopting", "puppies"], 10).keys() == {0}  # Porter stemming
    numbers, similarity, _ = index.dense(EMBEDDER.embed(["a new dog joined the family"])[0])
    assert numbers[int(similarity.argmax())] == 0
    index.remove([0])
    assert set(index.lexical(["biscuit"], 10)) == {2} and len(index) == 2
    index.drop()
    assert index.lexical(["biscuit"], 10) == {}


def test_admission_fills_the_room_by_score_and_size():
    pages = [Page("m", i, 0, i, "user", tokens, "x") for i, tokens in enumerate([50, 80, 30, 20])]
    ranked = [Score(p, score=1.0 - i / 10) for i, p in enumerate(pages)]
    assert [s.page.number for s in admit(ranked, 100)] == [0, 2, 3]  # page 1 does not fit; smaller ones after it do


def test_prompt_dates_days_and_recalled_pages():
    a = Page("m", 0, 0, 0, "user", 5, "Maria: hi", time=ts(2023, 5, 8))
    b = Page("m", 1, 5, 1, "user", 5, "Tim: hello", time=ts(2023, 5, 8))
    c = Page("m", 2, 10, 2, "user", 5, "Maria: back again", time=ts(2023, 5, 20))
    e = Page("m", 4, 20, 4, "user", 5, "Tim: and again", time=ts(2023, 5, 20))
    f = Page("m", 5, 25, 5, "user", 5, "Maria: later", time=ts(2023, 5, 28))
    c.recalled = e.recalled = f.recalled = True
    d = Page("m", 3, 15, 3, "user", 5, "Tim: today", time=ts(2023, 6, 1))
    messages = [m["content"] for m in assemble([a, b, c, d], dated=True)]
    assert messages == ["[8 May 2023] Maria: hi", "Tim: hello", "[recalled memory, 20 May 2023] Maria: back again", "[1 June 2023] Tim: today"]
    same_day = [m["content"] for m in assemble([a, b], dated=False)]
    assert same_day == ["Maria: hi", "Tim: hello"]  # a chat within one day carries no dates
    # recalled pages that follow one another are one message, each day said once
    block = [m["content"] for m in assemble([a, c, e, f, d], dated=True)]
    assert block == [
        "[8 May 2023] Maria: hi",
        "[recalled memory, 20 May 2023] Maria: back again\nTim: and again\n[28 May 2023] Maria: later",
        "[1 June 2023] Tim: today",
    ]
    # appending a recalled page keeps the block a prefix of itself (the KV stays reusable)
    assert block[1].startswith(assemble([a, c, e], dated=True)[1]["content"])


def test_cut_keeps_utterances_whole(tiny_backend):
    enc, dec = tiny_backend.encode, tiny_backend.decode
    lines = [f"Speaker {i}: this is utterance number {i}, and it says a little more.\n" for i in range(12)]
    text = "".join(lines)
    pieces = cut(text, 40, enc, dec)
    assert "".join(t for t, _ in pieces) == text
    assert all(t.endswith("\n") for t, _ in pieces)  # every page ends at the end of an utterance
    prose = "One sentence here. Another one follows! Does a third? " * 6
    assert all(t.rstrip().endswith((".", "!", "?")) for t, _ in cut(prose, 24, enc, dec))


def test_a_question_naming_a_month_recalls_that_months_page(tiny_backend, tmp_path):
    """Three look-alike pages said in different months: the month in the question decides."""

    async def body(kernel, sh):
        memory = kernel.memory
        for month, what in ((3, "pottery"), (6, "chess"), (9, "salsa dancing")):
            await memory.store(sh.pid, "user", f"Maria: I signed up for a {what} class at the community center.", said=ts(2023, month, 10))
            for i in range(6):
                await memory.store(sh.pid, "user", f"Tim: The weather was strange again, rain and sun number {i}.", said=ts(2023, month, 11))
        evicted = [n for n, p in memory.table(sh.pid).pages.items() if not p.resident]
        turn = await memory.begin_turn(sh.pid, [{"role": "user", "content": "What class did Maria sign up for in June 2023?"}], remember=False)
        await memory.end_turn(sh.pid, None)
        return evicted, turn

    # (the budget bounds the whole prompt, framed by the chat template: it holds the question and a recalled page)
    evicted, turn = run(tiny_backend, body, tmp_path, page_tokens=64, budget=100, recent_share=0.0)
    assert 7 in evicted  # the June page (pages 0-6 are March's) had left RAM
    best = turn.recalled[0]
    assert best.page.number == 7 and best.paged_in and best.why.time and 7 in turn.faulted
    recalled = next(m["content"] for m in turn.prompt if m["content"].startswith("[recalled memory"))
    assert turn.prompt.count(turn.prompt[-1]) == 1 and "10 June 2023] Maria" in recalled  # dated, in the recalled block


def test_a_hit_brings_its_neighbour_when_it_fits(tiny_backend, tmp_path):
    """The answer is a reply that does not name its topic: it comes in beside the question."""

    async def body(kernel, sh):
        memory = kernel.memory
        await memory.store(sh.pid, "user", "Maria: We adopted a dog from the shelter and named her Biscuit!")
        await memory.store(sh.pid, "user", "Tim: Aww! What kind is she?")
        await memory.store(sh.pid, "user", "Maria: A beagle mix, and she already chews every shoe.")
        for i in range(10):
            await memory.store(sh.pid, "user", f"Tim: Work was busy, meeting after meeting, day {i}.")
        turn = await memory.begin_turn(sh.pid, [{"role": "user", "content": "Tell me about Biscuit the shelter dog."}], remember=False)
        await memory.end_turn(sh.pid, None)
        return turn

    turn = run(tiny_backend, body, tmp_path, page_tokens=64, budget=90, recent_share=0.0)
    why = {r.page.number: r.why for r in turn.recalled}
    assert 0 in why and why[0].relevant and why[0].lexical > 0 and why[0].dense > 0
    assert 1 in turn.prompt_pages and why[1].neighbour_of == 0  # the reply next to the hit


def test_generated_conversations_are_deterministic_and_consistent():
    a, b = generate(3, 12), generate(3, 12)
    assert [t.line for t in a.turns] == [t.line for t in b.turns] and len(a.questions) == len(b.questions)
    assert len(a.turns) > 150 and len({q.kind for q in a.questions}) == 6
    times = [t.time for t in a.turns]
    assert times == sorted(times) and len({t.session for t in a.turns}) == 12
    for q in a.questions:
        assert q.evidence and all(0 <= i < len(a.turns) for i in q.evidence)
        if q.kind in ("single-hop", "paraphrase", "time-scoped", "multi-hop"):  # the answer is said in the evidence
            assert any(ans.lower() in " ".join(a.turns[i].text for i in q.evidence).lower() for ans in q.answers), q
        if q.kind == "temporal":
            said = datetime.fromtimestamp(a.turns[q.evidence[0]].time)
            assert any(str(said.year) in ans for ans in q.answers)


