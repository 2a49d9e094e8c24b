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

Both are held to the budget as the model sees the prompt: the chat template's frame of each
message, dates and marks count, not only the utterances.

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
from llmos.kernel.memory.prompt import Framing
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
    over_budget: int = 0
    reusable: list[int] = field(default_factory=list)  # prompt tokens shared with the last question's prompt
    last_ids: list[int] = field(default_factory=list)

    def prompt(self, ids: list[int], budget: int) -> None:
        """The prompt as the model got it: its size against the budget, and the prefix it
        shares with the previous question's (what the process's retained KV could serve)."""
        if self.last_ids:
            self.reusable.append(_common_prefix(self.last_ids, ids))
        self.last_ids = ids
        self.over_budget += len(ids) > budget

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
            "prompt_tokens_max": max(self.prompt_tokens, default=0),
            "over_budget": self.over_budget,
            "reusable_tokens_mean": round(sum(self.reusable) / len(self.reusable), 1) if self.reusable else None,
        }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


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
    framing = Framing(encode, kernel.backend.encode_chat)
    embedder = CachedEmbedder(kernel.embedder)
    lines = [[t.line for t in c.turns] for c in convs]
    await trio.to_thread.run_sync(embedder.warm, [x for ls in lines for x in ls] + [q.text for c in convs for q in c.questions])
    tokens = [[len(encode(x)) for x in ls] for ls in lines]
    vectors = [np.asarray(embedder.embed(ls), dtype=np.float32) for ls in lines]
    out: dict[str, Any] = {"shares": {}, "history_tokens": [sum(t) for t in tokens]}
    for share in shares:
        row: dict[str, Any] = {}
        dense = Tally()
        paged = {name: Tally() for name in variants}
        latency: dict[str, dict[str, list[float]]] = {name: {"page_in": [], "page_out": [], "writeback": []} for name in variants}
        for ci, conv in enumerate(convs):
            budget = max(128, int(share * sum(tokens[ci])))
            for name, overrides in variants.items():
                memory = Memory(encode, kernel.backend.decode, embedder, _config(base, budget, overrides), kernel.backend.encode_chat)
                await kernel.use_memory(memory)
                await memory.open_store()
                sh = session(kernel, f"bench-{name}-{ci}")
                pages = await _tell(memory, sh, conv, progress, f"{share:.0%} {name}: conversation {ci + 1}/{len(convs)}")
                await _ask(kernel, memory, sh, conv, pages, paged[name], answers, max_tokens, budget, progress, f"{share:.0%} {name}")
                for kind in ("page_in", "page_out", "writeback"):
                    latency[name][kind] += list(getattr(memory.latency, kind))
                await memory.close()
            sh = session(kernel, f"bench-dense-{ci}")
            await _ask_dense(kernel, framing, embedder, sh, conv, vectors[ci], budget, dense, answers, max_tokens, progress)
        for name, tally in paged.items():
            figures = tally.figures()
            figures["page_in_p99_ms"] = round(p99(latency[name]["page_in"]), 3)
            figures["page_out_p99_ms"] = round(p99(latency[name]["page_out"]), 3)
            figures["writeback_p99_ms"] = round(p99(latency[name]["writeback"]), 3)
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
    "no-stick": {"resident_bonus": 0.0},
    "stick-0.5": {"resident_bonus": 0.5},
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
    kernel: Any, memory: Memory, sh: Any, conv: Conversation, pages: list[list[int]], tally: Tally, answers: int,
    max_tokens: int, budget: int, progress: Callable[[str], None], label: str,
) -> None:
    recorded = kernel.record_llm_calls()
    tally.last_ids = []
    for qi, q in enumerate(conv.questions):
        if qi < answers:
            reply = await sh.mem.chat(q.text, max_tokens=max_tokens, remember=False)
            prompt_pages, content = set(reply.memory.prompt_pages), reply.content
            fault_ms = memory.latency.fault[-1]
            ids = list(recorded[-1][0])
        else:
            turn = await memory.begin_turn(sh.pid, [{"role": "user", "content": q.text}], remember=False)
            prompt_pages, content, fault_ms = set(turn.prompt_pages), None, turn.fault_ms
            ids = kernel.backend.encode_chat(turn.prompt)
            await memory.end_turn(sh.pid, None)
        present = {i for i in q.evidence if all(n in prompt_pages for n in pages[i])}
        tally.prompt(ids, budget)
        tally.add(q.kind, q.evidence, present, len(ids))
        tally.fault_ms.append(fault_ms)
        tally.turn_ms.append(memory.latency.turn[-1])
        if content is not None:
            tally.answer(content, q.answers)
        progress(f"{label}: asked {qi + 1}/{len(conv.questions)}")


async def _ask_dense(
    kernel: Any, framing: Framing, embedder: CachedEmbedder, sh: Any, conv: Conversation, vectors: np.ndarray, budget: int,
    tally: Tally, answers: int, max_tokens: int, progress: Callable[[str], None],
) -> None:
    """The chosen utterances go in one message, in the order they were said, each day dated
    once (as paged memory's recalled block is framed); each is charged its tokens, its line
    break and half a date, and the prompt is then held to the budget exactly."""
    encode = kernel.backend.encode
    costs = [len(encode(t.line)) + 1 + len(encode(f"[{day(t.time)}] ")) // 2 for t in conv.turns]
    system = {"role": "system", "content": SYSTEM}
    tally.last_ids = []
    for qi, q in enumerate(conv.questions):
        started = time.perf_counter()
        query = np.asarray(embedder.embed([q.text])[0], dtype=np.float32)
        order = np.argsort(-(vectors @ query), kind="stable")
        question = {"role": "user", "content": q.text}
        left = budget - framing.count([system, question]) - framing.frame("user")
        chosen: list[int] = []
        for i in order.tolist():
            if costs[i] <= left:
                chosen.append(i)
                left -= costs[i]
        messages = _dense_prompt(conv, chosen, system, question)
        ids = kernel.backend.encode_chat(messages)
        while len(ids) > budget and chosen:  # the estimate was short: the least similar goes
            chosen.pop()
            messages = _dense_prompt(conv, chosen, system, question)
            ids = kernel.backend.encode_chat(messages)
        tally.fault_ms.append((time.perf_counter() - started) * 1000)
        tally.turn_ms.append(tally.fault_ms[-1])
        tally.prompt(ids, budget)
        tally.add(q.kind, q.evidence, set(chosen), len(ids))
        if qi < answers:
            reply = await sh.llm.chat(messages, max_tokens=max_tokens)
            tally.answer(reply.content, q.answers)
        progress(f"dense: asked {qi + 1}/{len(conv.questions)}")


def _dense_prompt(conv: Conversation, chosen: list[int], system: dict[str, str], question: dict[str, str]) -> list[dict[str, str]]:
    lines, last = [], None
    for i in sorted(chosen):
        when = day(conv.turns[i].time)
        lines.append((f"[{when}] " if when != last else "") + conv.turns[i].line)
        last = when
    return [system, *([{"role": "user", "content": "\n".join(lines)}] if lines else []), question]
