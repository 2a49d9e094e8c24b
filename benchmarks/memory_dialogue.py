"""The dialogue scenario of `llmos bench memory`: evidence recall on generated conversations.

Each conversation (dialogues.py) is told to a fresh process, one message per utterance
("Caroline: ..."), each with the time it was said; then every question is asked as a chat
turn that is not kept. Contenders, at each resident budget (a share of the conversation's
tokens):

  paged memory   the kernel's memory with its settings (or a variant of them): the prompt is
                 what begin_turn assembles; evidence is recalled when its pages are in it
  dense          the plain baseline: every utterance embedded with the same MiniLM, the
                 budget (less the system prompt and the question) filled with the
                 utterances most similar to the question, no recency

Figures: evidence recall per evidence turn and per question (all of its evidence), per kind
of question; with --answers, answer accuracy (the reply contains an accepted answer) from the
kernel's model for both; the fault's latency per turn, page-in and page-out per page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import trio

from llmos.benchmarks.dialogues import Conversation
from llmos.config import MemoryConfig
from llmos.kernel.memory.manager import Memory, p99, percentile
from llmos.kernel.memory.when import day

SYSTEM = (
    "You remember a long chat between two friends. Parts of it appear below, some as recalled "
    "memory with their dates. Answer the question in a few words, using only what they said."
)


class CachedEmbedder:
    """The kernel's embedder, remembering what it embedded: every contender stores the same
    utterances, and embedding them again for each would only repeat the same vectors."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.cache: dict[str, list[float]] = {}

    def warm(self, texts: list[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for text, vector in zip(missing, self.embedder.embed(missing)):
            self.cache[text] = vector

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.warm(texts)
        return [self.cache[t] for t in texts]

    def chroma_function(self) -> Any:
        return self.embedder.chroma_function()


@dataclass
class Tally:
    """Evidence recall and answers of one contender at one budget."""

    evidence_turns: int = 0
    evidence_found: int = 0
    questions: int = 0
    questions_complete: int = 0
    answered: int = 0
    correct: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [questions, complete, turns, found]
    fault_ms: list[float] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)

    def add(self, kind: str, evidence: list[int], present: set[int], tokens: int) -> bool:
        found = sum(1 for e in evidence if e in present)
        complete = found == len(evidence)
        self.evidence_turns += len(evidence)
        self.evidence_found += found
        self.questions += 1
        self.questions_complete += complete
        k = self.by_kind.setdefault(kind, [0, 0, 0, 0])
        k[0] += 1
        k[1] += complete
        k[2] += len(evidence)
        k[3] += found
        self.prompt_tokens.append(tokens)
        return complete

    def answer(self, reply: str, answers: list[str]) -> bool:
        ok = any(a.lower() in reply.lower() for a in answers)
        self.answered += 1
        self.correct += ok
        return ok

    def figures(self) -> dict[str, Any]:
        return {
            "evidence_recall": round(self.evidence_found / max(1, self.evidence_turns), 4),
            "question_recall": round(self.questions_complete / max(1, self.questions), 4),
            "answer_accuracy": round(self.correct / self.answered, 4) if self.answered else None,
            "questions": self.questions,
            "evidence_turns": self.evidence_turns,
            "by_kind": {
                k: {"questions": q, "question_recall": round(c / q, 4), "evidence_recall": round(f / max(1, t), 4)}
                for k, (q, c, t, f) in sorted(self.by_kind.items())
            },
            "fault_p50_ms": round(percentile(self.fault_ms, 0.5), 2) if self.fault_ms else None,
            "fault_p99_ms": round(p99(self.fault_ms), 2) if self.fault_ms else None,
            "turn_p99_ms": round(p99(self.turn_ms), 2) if self.turn_ms else None,
            "prompt_tokens_mean": round(sum(self.prompt_tokens) / max(1, len(self.prompt_tokens)), 1),
        }


async def run(
    kernel: Any,
    convs: list[Conversation],
    shares: list[float],
    variants: dict[str, dict[str, Any]],
    answers: int,
    max_tokens: int,
    base: MemoryConfig,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Every contender at every budget share; `answers`: questions per conversation the
    model answers (0: recall only, no model calls)."""
    from llmos.runtime import session

    encode = kernel.backend.encode
    embedder = CachedEmbedder(kernel.embedder)
    lines = [[t.line for t in c.turns] for c in convs]
    await trio.to_thread.run_sync(embedder.warm, [x for ls in lines for x in ls] + [q.text for c in convs for q in c.questions])
    tokens = [[len(encode(x)) for x in ls] for ls in lines]
    vectors = [np.asarray(embedder.embed(ls), dtype=np.float32) for ls in lines]
    system_tokens = len(encode(SYSTEM))
    out: dict[str, Any] = {"shares": {}, "history_tokens": [sum(t) for t in tokens]}
    for share in shares:
        row: dict[str, Any] = {}
        dense = Tally()
        paged = {name: Tally() for name in variants}
        latency: dict[str, dict[str, list[float]]] = {name: {"page_in": [], "page_out": []} for name in variants}
        for ci, conv in enumerate(convs):
            budget = max(128, int(share * sum(tokens[ci])))
            for name, overrides in variants.items():
                memory = Memory(encode, kernel.backend.decode, embedder, _config(base, budget, overrides))
                kernel.memory = memory
                await memory.open_store()
                sh = session(kernel, f"bench-{name}-{ci}")
                pages = await _tell(memory, sh, conv, progress, f"{share:.0%} {name}: conversation {ci + 1}/{len(convs)}")
                await _ask(memory, sh, conv, pages, paged[name], answers, max_tokens, progress, f"{share:.0%} {name}")
                latency[name]["page_in"] += list(memory.latency.page_in)
                latency[name]["page_out"] += list(memory.latency.page_out)
                await memory.close()
            sh = session(kernel, f"bench-dense-{ci}")
            await _ask_dense(kernel, embedder, sh, conv, vectors[ci], tokens[ci], budget - system_tokens, dense, answers, max_tokens, progress)
        for name, tally in paged.items():
            figures = tally.figures()
            figures["page_in_p99_ms"] = round(p99(latency[name]["page_in"]), 2)
            figures["page_out_p99_ms"] = round(p99(latency[name]["page_out"]), 2)
            row[name] = figures
        row["dense"] = dense.figures()
        out["shares"][f"{share:.2f}"] = row
    return out


VARIANTS: dict[str, dict[str, Any]] = {  # ablations of the kernel's settings (--variants)
    "kernel": {},
    "dense-only": {"lexical_weight": 0.0, "min_lexical": 2.0, "time_weight": 0.0, "neighbour_share": 0.0},
    "no-lexical": {"lexical_weight": 0.0, "min_lexical": 2.0},
    "lexical-1": {"lexical_weight": 1.0},
    "no-time": {"time_weight": 0.0},
    "no-neighbours": {"neighbour_share": 0.0},
    "no-close-neighbours": {"neighbour_hits": 0},
    "recent-0": {"recent_share": 0.0},
    "recent-0.1": {"recent_share": 0.1},
    "recent-0.5": {"recent_share": 0.5},
}


def _config(base: MemoryConfig, budget: int, overrides: dict[str, Any]) -> MemoryConfig:
    return MemoryConfig(**{**base.__dict__, **overrides, "budget": budget})


async def _tell(memory: Memory, sh: Any, conv: Conversation, progress: Callable[[str], None], label: str) -> list[list[int]]:
    """Every utterance into the process's memory (mem.store, with the time it was said);
    returns each utterance's pages."""
    await sh.call("mem.store", text=SYSTEM, role="system", pin=True)
    pages: list[list[int]] = []
    for i, turn in enumerate(conv.turns):
        stored = await sh.call("mem.store", text=turn.line, time=turn.time)
        pages.append(stored.pages)
        if i % 50 == 0:
            progress(f"{label}: told {i}/{len(conv.turns)}")
    return pages


async def _ask(
    memory: Memory, sh: Any, conv: Conversation, pages: list[list[int]], tally: Tally, answers: int, max_tokens: int,
    progress: Callable[[str], None], label: str,
) -> None:
    table = memory.table(sh.pid)
    for qi, q in enumerate(conv.questions):
        if qi < answers:
            reply = await sh.mem.chat(q.text, max_tokens=max_tokens, remember=False)
            prompt_pages, content = set(reply.memory.prompt_pages), reply.content
            fault_ms = memory.latency.fault[-1]
        else:
            turn = await memory.begin_turn(sh.pid, [{"role": "user", "content": q.text}], remember=False)
            prompt_pages, content, fault_ms = set(turn.prompt_pages), None, turn.fault_ms
            await memory.end_turn(sh.pid, None)
        present = {i for i in q.evidence if all(n in prompt_pages for n in pages[i])}
        tokens = sum(table.pages[n].tokens for n in prompt_pages if n in table.pages)
        tally.add(q.kind, q.evidence, present, tokens)
        tally.fault_ms.append(fault_ms)
        tally.turn_ms.append(memory.latency.turn[-1])
        if content is not None:
            tally.answer(content, q.answers)
        progress(f"{label}: asked {qi + 1}/{len(conv.questions)}")


async def _ask_dense(
    kernel: Any, embedder: CachedEmbedder, sh: Any, conv: Conversation, vectors: np.ndarray, tokens: list[int], room: int, tally: Tally,
    answers: int, max_tokens: int, progress: Callable[[str], None],
) -> None:
    encode = kernel.backend.encode
    for qi, q in enumerate(conv.questions):
        started = time.perf_counter()
        query = np.asarray(embedder.embed([q.text])[0], dtype=np.float32)
        order = np.argsort(-(vectors @ query), kind="stable")
        left = room - len(encode(q.text))
        chosen: list[int] = []
        for i in order.tolist():
            if tokens[i] <= left:
                chosen.append(i)
                left -= tokens[i]
        tally.fault_ms.append((time.perf_counter() - started) * 1000)
        tally.turn_ms.append(tally.fault_ms[-1])
        tally.add(q.kind, q.evidence, set(chosen), sum(tokens[i] for i in chosen))
        if qi < answers:
            context = [
                {"role": "user", "content": f"[{day(conv.turns[i].time)}] {conv.turns[i].line}"} for i in sorted(chosen)
            ]
            messages = [{"role": "system", "content": SYSTEM}, *context, {"role": "user", "content": q.text}]
            reply = await sh.llm.chat(messages, max_tokens=max_tokens)
            tally.answer(reply.content, q.answers)
        progress(f"dense: asked {qi + 1}/{len(conv.questions)}")
