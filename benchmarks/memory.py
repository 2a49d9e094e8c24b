"""`llmos bench memory`: long-horizon recall of paged memory, in two scenarios.

dialogue (memory_dialogue.py): generated multi-session conversations between two people, with
questions of several kinds and their evidence turns; evidence recall and answer accuracy of
the kernel's paged memory against plain dense retrieval, at 5%, 10% and 20% budgets.

facts: a few hundred people, one fact each ("Maria Okafor
plays the cello."), each told to the agent in its own turn among filler sentences; then
questions about the early facts. Both contenders get the same resident budget (a share of the
history's tokens, 10% by default) and the same real model:

  paged memory    the turns go into the process's memory (mem.store); each question is a
                  mem.chat, whose page fault brings evicted pages back by relevance
  sliding window  the most recent messages that fit the budget, asked through llm.chat

Questions are asked without keeping them (mem.chat remember=false, and the window does not
grow), so each is judged on what the agent was told; --keep-answers keeps them, as a plain
conversation would (a small model then tends to copy its own earlier wrong answers).

Per contender: residency_recall (the page holding the answer is in the prompt when the question
is asked), answer_accuracy (the reply contains the answer; the small default model is weak at
this, and it is reported as it is), page-out and page-in p99 per page, faults.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from llmos.benchmarks import memory_dialogue
from llmos.benchmarks.dialogues import conversations
from llmos.benchmarks.memory_dialogue import VARIANTS
from llmos.config import KernelConfig
from llmos.kernel.memory.manager import Memory, MemoryConfig, p99, percentile
from llmos.kernel.memory.pagetable import cut
from llmos.kernel.memory.prompt import Framing

SYSTEM = (
    "You are an assistant with a long memory. Earlier parts of the conversation may appear as "
    "recalled memory. Answer each question in a few words, using what you were told."
)
FIRST = (
    "Maria Omar Chen Liam Aisha Noah Elena Kofi Yuki Lucas Priya Mateo Zara Ivan Leila Tomas Ines Ravi "
    "Sofia Hugo Amara Felix Nadia Oscar Mei Diego Hana Viktor Lena Samir"
).split()
LAST = (
    "Okafor Lindqvist Moreau Tanaka Kowalski Haddad Silva Novak Brennan Ferreira Castillo Nakamura Petrov "
    "Adeyemi Jensen Rossi Varga Osei Dubois Ahmed Keller Romero Sato Walsh Horvat Bianchi Mensah Larsen Costa Ibrahim"
).split()
ATTRIBUTES = [  # statement, question, values
    ("{n} lives in {v}.", "In which city does {n} live?", "Lisbon Oslo Nairobi Lima Hanoi Quito Tunis Perth Riga Dakar Porto Kyoto"),
    ("{n} works as a {v}.", "What is {n}'s job?", "baker pilot nurse plumber chemist tailor florist surgeon librarian carpenter"),
    ("{n} has a pet {v}.", "What pet does {n} have?", "parrot ferret tortoise hamster iguana rabbit goldfish beagle"),
    ("{n}'s favorite color is {v}.", "What is {n}'s favorite color?", "teal crimson amber violet indigo olive maroon coral"),
    ("{n} plays the {v}.", "Which instrument does {n} play?", "cello banjo oboe harp trumpet violin flute accordion"),
    ("{n} drives a {v}.", "What vehicle does {n} drive?", "tractor scooter minivan pickup convertible motorbike"),
    ("{n}'s favorite fruit is the {v}.", "What is {n}'s favorite fruit?", "mango papaya apricot lychee plum fig kiwi"),
    ("{n} speaks {v} at home.", "Which language does {n} speak at home?", "Finnish Swahili Tagalog Welsh Basque Hungarian Icelandic"),
]
THINGS = (
    "The town hall|The river ferry|The night market|The stadium|The post office|The tram line|The harbour"
    "|The school choir|The city council|The weather service|The public pool|The railway museum"
).split("|")
EVENTS = (
    "announced new opening hours|was busier than usual|reported a short delay|held a public meeting"
    "|changed its timetable|asked for volunteers|published a notice|closed for repairs"
).split("|")
WHEN = "on Monday|last weekend|this morning|in the early evening|during the holidays|after the storm".split("|")


@dataclass
class Fact:
    statement: str
    question: str
    answer: str
    turn: int  # index of the turn that tells it


@dataclass
class Workload:
    turns: list[str]
    facts: list[Fact]
    asked: list[int]  # indices into facts, in asking order


def make_workload(n_facts: int, filler: int, n_questions: int, seed: int) -> Workload:
    """One fact per turn, hidden among `filler` filler sentences; questions about the facts
    of the first half of the conversation."""
    rng = random.Random(seed)
    names = rng.sample([f"{a} {b}" for a in FIRST for b in LAST], n_facts)
    turns: list[str] = []
    facts: list[Fact] = []
    for name in names:
        statement, question, values = rng.choice(ATTRIBUTES)
        value = rng.choice(values.split())
        sentences = [f"{rng.choice(THINGS)} {rng.choice(EVENTS)} {rng.choice(WHEN)}." for _ in range(filler)]
        fact = statement.format(n=name, v=value)
        sentences.insert(rng.randrange(filler + 1), fact)
        facts.append(Fact(fact, question.format(n=name), value, len(turns)))
        turns.append(" ".join(sentences))
    early = list(range(max(1, n_facts // 2)))
    asked = rng.sample(early, min(n_questions, len(early)))
    return Workload(turns, facts, asked)


@dataclass
class Result:
    residency_recall: float = 0.0
    answer_accuracy: float = 0.0
    page_out_p99_ms: float = 0.0
    page_in_p99_ms: float = 0.0
    page_out_p50_ms: float = 0.0
    page_in_p50_ms: float = 0.0
    writeback_p99_ms: float = 0.0
    fault_p99_ms: float = 0.0
    faults: int = 0
    page_outs: int = 0
    page_ins: int = 0
    embed_p99_ms: float = 0.0
    prompt_tokens_mean: float = 0.0
    prompt_tokens_max: int = 0
    over_budget: int = 0  # prompts longer than the budget
    cached_tokens_mean: float = 0.0  # prompt tokens the engine reused from the process's retained KV
    turn_p99_ms: float = 0.0
    feed_seconds: float = 0.0
    question_seconds: float = 0.0
    answers: list[dict[str, Any]] = field(default_factory=list)


def question_text(fact: Fact) -> str:
    return fact.question  # how to answer is said once, in the pinned system prompt


async def run_paged(kernel: Any, wl: Workload, budget: int, max_tokens: int, keep: bool, progress: Any) -> Result:
    from llmos.runtime import session

    sh = session(kernel, "bench-memory")
    await sh.mem.budget(budget)
    await sh.mem.store(SYSTEM, role="system", pin=True)
    answer_page: dict[int, int] = {}  # turn -> page holding its fact
    started = time.perf_counter()
    for i, turn in enumerate(wl.turns):
        pages = await sh.mem.store(turn)
        answer_page[i] = pages[_piece_with(kernel, turn, wl.facts[i].statement)]
        progress(f"paged memory: told {i + 1}/{len(wl.turns)} turns")
    result = Result(feed_seconds=time.perf_counter() - started)
    started = time.perf_counter()
    for n, index in enumerate(wl.asked):
        fact = wl.facts[index]
        reply = await sh.mem.chat(question_text(fact), max_tokens=max_tokens, remember=keep)
        resident = answer_page[fact.turn] in reply.memory.prompt_pages
        result.answers.append(_answer(fact, reply.content, resident, reply.usage, faulted=len(reply.memory.faulted)))
        progress(f"paged memory: asked {n + 1}/{len(wl.asked)} questions")
    result.question_seconds = time.perf_counter() - started
    st = await sh.mem.stat(pages=False)
    latency = kernel.memory.latency
    result.page_out_p99_ms = round(p99(latency.page_out), 3)
    result.page_in_p99_ms = round(p99(latency.page_in), 3)
    result.page_out_p50_ms = round(percentile(latency.page_out, 0.5), 3)
    result.page_in_p50_ms = round(percentile(latency.page_in, 0.5), 3)
    result.writeback_p99_ms = round(p99(latency.writeback), 3)
    result.fault_p99_ms = round(p99(latency.fault), 3)
    result.turn_p99_ms = round(p99(latency.turn), 3)
    result.embed_p99_ms = round(p99(latency.embed), 3)
    result.faults, result.page_outs, result.page_ins = st.faults, st.page_outs, st.page_ins
    return _score(result, budget)


def _piece_with(kernel: Any, turn: str, statement: str) -> int:
    """Which page of the turn holds the fact: the turn is cut as the kernel cuts it."""
    pieces = cut(turn, kernel.memory.config.page_tokens, kernel.backend.encode, kernel.backend.decode)
    text = ""
    for i, (piece, _) in enumerate(pieces):
        text += piece
        if statement in text:
            return i
    return len(pieces) - 1


async def run_window(kernel: Any, wl: Workload, budget: int, max_tokens: int, keep: bool, progress: Any) -> Result:
    """The baseline: keep only the most recent messages that fit the same budget (the whole
    prompt, as the chat template frames it, as for paged memory)."""
    from llmos.runtime import session

    sh = session(kernel, "bench-window")
    encode = kernel.backend.encode
    framing = Framing(encode, kernel.backend.encode_chat)
    history: list[tuple[dict[str, str], int, int | None]] = [  # message, tokens with its frame, turn
        ({"role": "user", "content": t}, len(encode(t)) + framing.frame("user"), i) for i, t in enumerate(wl.turns)
    ]
    system = {"role": "system", "content": SYSTEM}
    result = Result()
    started = time.perf_counter()
    for n, index in enumerate(wl.asked):
        fact = wl.facts[index]
        question = {"role": "user", "content": question_text(fact)}
        room = budget - framing.count([system, question])
        window: list[tuple[dict[str, str], int, int | None]] = []
        for entry in reversed(history):
            if entry[1] > room:
                break
            window.insert(0, entry)
            room -= entry[1]
        while window and framing.count([system, *(m for m, _, _ in window), question]) > budget:
            window.pop(0)  # the estimate was short (tokens merge across a frame): the oldest goes
        reply = await sh.llm.chat([system, *(m for m, _, _ in window), question], max_tokens=max_tokens)
        resident = any(turn == fact.turn for _, _, turn in window)
        result.answers.append(_answer(fact, reply.content, resident, reply.usage, faulted=0))
        if keep:
            history.append((question, len(encode(question["content"])), None))
            history.append(({"role": "assistant", "content": reply.content}, len(encode(reply.content)), None))
        progress(f"sliding window: asked {n + 1}/{len(wl.asked)} questions")
    result.question_seconds = time.perf_counter() - started
    return _score(result, budget)


def _answer(fact: Fact, reply: str, resident: bool, usage: Any, faulted: int) -> dict[str, Any]:
    return {
        "question": fact.question,
        "answer": fact.answer,
        "reply": reply,
        "correct": fact.answer.lower() in reply.lower(),
        "resident": resident,
        "faulted": faulted,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.cached_tokens,
    }


def _score(result: Result, budget: int) -> Result:
    answers = result.answers
    if answers:
        result.prompt_tokens_max = max(a["prompt_tokens"] for a in answers)
        result.over_budget = sum(a["prompt_tokens"] > budget for a in answers)
        result.residency_recall = round(sum(a["resident"] for a in answers) / len(answers), 4)
        result.answer_accuracy = round(sum(a["correct"] for a in answers) / len(answers), 4)
        result.prompt_tokens_mean = round(sum(a["prompt_tokens"] for a in answers) / len(answers), 1)
        result.cached_tokens_mean = round(sum(a["cached_tokens"] for a in answers) / len(answers), 1)
    result.feed_seconds = round(result.feed_seconds, 2)
    result.question_seconds = round(result.question_seconds, 2)
    return result


# -- the command ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmos bench memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=["all", "dialogue", "facts"], default="all", help="which workload (default all)")
    d = p.add_argument_group("dialogue scenario")
    d.add_argument("--conversations", type=int, default=3, help="generated conversations (default 3)")
    d.add_argument("--sessions", type=int, default=20, help="dated sessions per conversation (default 20)")
    d.add_argument("--shares", default="0.05,0.10,0.20", help="resident budgets as shares of the history (default 0.05,0.10,0.20)")
    d.add_argument("--answers", type=int, default=8, help="questions per conversation the model answers (0: recall only; default 8)")
    d.add_argument(
        "--variants", default="kernel",
        help=f"memory settings to compare, comma-separated: {', '.join(VARIANTS)}, or 'all' (default kernel)",
    )
    f = p.add_argument_group("facts scenario")
    f.add_argument("--facts", type=int, default=200, help="distinct facts told, one per turn (default 200)")
    f.add_argument("--filler", type=int, default=3, help="filler sentences around each fact (default 3)")
    f.add_argument("--questions", type=int, default=25, help="questions about early facts (default 25)")
    f.add_argument("--budget-share", type=float, default=0.10, help="resident budget / history tokens (default 0.10)")
    f.add_argument(
        "--keep-answers", action="store_true",
        help="keep each question and answer in the conversation (default: ask with remember=false, so a "
        "wrong answer cannot become a 'fact' that later answers copy)",
    )
    f.add_argument("--no-baseline", action="store_true", help="skip the sliding-window baseline")
    p.add_argument("--page-tokens", type=int, default=128, help="page size in tokens (default 128)")
    p.add_argument("--policy", choices=["lru", "lru-k", "clock"], default="clock", help="replacement policy")
    p.add_argument("--max-tokens", type=int, default=24, help="tokens per answer (default 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model (default: the kernel's default, smollm2)")
    p.add_argument("--chroma-url", default=None, help="a chroma server; default: an embedded store in a temp folder")
    p.add_argument("--json", metavar="PATH", help="write the figures (and every answer) as JSON")
    return p


async def bench(args: argparse.Namespace, console: Console, backend: Any = None) -> dict[str, Any]:
    """Run the chosen scenarios; `backend` reuses an already loaded model (tests)."""
    from llmos.runtime import boot

    config = KernelConfig()
    if args.model:
        config.model = args.model
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="llmos-bench-memory-") as tmp, console.status("loading the model…") as status:
        async with boot(config, backend) as kernel:
            status.update("loading the embedding model…")
            await trio.to_thread.run_sync(kernel.embedder.embed, ["warm up"])  # one-time costs are not paging
            if args.scenario in ("all", "dialogue"):
                started = time.perf_counter()
                report["dialogue"] = await bench_dialogue(args, kernel, Path(tmp) / "dialogue", status.update)
                report["dialogue"]["seconds"] = round(time.perf_counter() - started, 1)
            if args.scenario in ("all", "facts"):
                started = time.perf_counter()
                report["facts"] = await bench_facts(args, kernel, Path(tmp) / "facts", status.update)
                report["facts"]["seconds"] = round(time.perf_counter() - started, 1)
    return report


async def bench_dialogue(args: argparse.Namespace, kernel: Any, path: Path, progress: Any) -> dict[str, Any]:
    convs = conversations(args.seed, args.conversations, args.sessions)
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)} or all")
    shares = [float(x) for x in args.shares.split(",")]
    base = MemoryConfig(page_tokens=args.page_tokens, policy=args.policy, chroma_url=args.chroma_url, chroma_path=path)
    result = await memory_dialogue.run(
        kernel, convs, shares, {n: VARIANTS[n] for n in names}, args.answers, args.max_tokens, base, progress
    )
    kinds: dict[str, int] = {}
    for conv in convs:
        for q in conv.questions:
            kinds[q.kind] = kinds.get(q.kind, 0) + 1
    result["config"] = {
        "model": kernel.backend.name,
        "conversations": len(convs),
        "sessions": args.sessions,
        "turns": sum(len(c.turns) for c in convs),
        "questions": sum(len(c.questions) for c in convs),
        "kinds": kinds,
        "answered_per_conversation": args.answers,
        "page_tokens": args.page_tokens,
        "policy": args.policy,
        "variants": {n: VARIANTS[n] for n in names},
        "seed": args.seed,
    }
    return result


async def bench_facts(args: argparse.Namespace, kernel: Any, path: Path, progress: Any) -> dict[str, Any]:
    wl = make_workload(args.facts, args.filler, args.questions, args.seed)
    history_tokens = sum(len(kernel.backend.encode(t)) for t in wl.turns)
    budget = max(args.page_tokens, int(args.budget_share * history_tokens))
    await kernel.use_memory(Memory(
        kernel.backend.encode,
        kernel.backend.decode,
        kernel.embedder,
        MemoryConfig(
            page_tokens=args.page_tokens, budget=budget, policy=args.policy, chroma_url=args.chroma_url, chroma_path=path
        ),
        kernel.backend.encode_chat,
    ))
    await kernel.memory.open_store()
    keep = args.keep_answers
    paged = await run_paged(kernel, wl, budget, args.max_tokens, keep, progress)
    window = None if args.no_baseline else await run_window(kernel, wl, budget, args.max_tokens, keep, progress)
    await kernel.memory.close()
    return {
        "config": {
            "model": kernel.backend.name,
            "facts": args.facts,
            "questions": len(wl.asked),
            "filler_per_turn": args.filler,
            "page_tokens": args.page_tokens,
            "policy": args.policy,
            "keep_answers": args.keep_answers,
            "history_tokens": history_tokens,
            "budget_tokens": budget,
            "budget_share": round(budget / history_tokens, 4),
            "store": args.chroma_url or "embedded",
            "seed": args.seed,
        },
        "paged": asdict(paged),
        "window": asdict(window) if window is not None else None,
    }


ROWS = [
    ("residency_recall", "residency recall", "{:.3f}"),
    ("answer_accuracy", "answer accuracy", "{:.3f}"),
    ("page_out_p99_ms", "page out p99 (ms/page evicted)", "{:.2f}"),
    ("page_in_p99_ms", "page in p99 (ms/page)", "{:.2f}"),
    ("page_out_p50_ms", "page out p50 (ms/page evicted)", "{:.2f}"),
    ("page_in_p50_ms", "page in p50 (ms/page)", "{:.2f}"),
    ("writeback_p99_ms", "writeback p99 (ms/page, in the background)", "{:.2f}"),
    ("fault_p99_ms", "turn fault p99 (ms): ranking, page in", "{:.2f}"),
    ("turn_p99_ms", "turn p99 (ms): store, embed, fault, evict", "{:.2f}"),
    ("faults", "faults", "{}"),
    ("page_outs", "page outs", "{}"),
    ("page_ins", "page ins", "{}"),
    ("embed_p99_ms", "embedding p99 (ms/page, at store)", "{:.2f}"),
    ("prompt_tokens_mean", "prompt tokens (mean)", "{:.0f}"),
    ("prompt_tokens_max", "prompt tokens (max)", "{}"),
    ("over_budget", "prompts over the budget", "{}"),
    ("cached_tokens_mean", "KV-reused tokens per turn (mean)", "{:.0f}"),
    ("feed_seconds", "telling the facts (s)", "{:.1f}"),
    ("question_seconds", "asking the questions (s)", "{:.1f}"),
]
NOT_PAGED = (
    "page_out_p99_ms", "page_in_p99_ms", "page_out_p50_ms", "page_in_p50_ms", "writeback_p99_ms", "fault_p99_ms", "turn_p99_ms",
    "embed_p99_ms", "feed_seconds",
)
DIALOGUE_ROWS = [
    ("evidence_recall", "evidence recall (per evidence turn)", "{:.3f}"),
    ("question_recall", "all evidence recalled (per question)", "{:.3f}"),
    ("answer_accuracy", "answer accuracy", "{:.3f}"),
    ("fault_p99_ms", "turn fault p99 (ms): ranking, page in", "{:.1f}"),
    ("turn_p99_ms", "turn p99 (ms): store, embed, fault, evict", "{:.1f}"),
    ("page_in_p99_ms", "page in p99 (ms/page)", "{:.1f}"),
    ("page_out_p99_ms", "page out p99 (ms/page evicted)", "{:.2f}"),
    ("writeback_p99_ms", "writeback p99 (ms/page, in the background)", "{:.1f}"),
    ("prompt_tokens_mean", "prompt tokens (mean)", "{:.0f}"),
    ("prompt_tokens_max", "prompt tokens (max)", "{}"),
    ("over_budget", "prompts over the budget", "{}"),
    ("reusable_tokens_mean", "prompt prefix kept from the last turn (mean)", "{:.0f}"),
]


def render(report: dict[str, Any]) -> list[Table]:
    tables = []
    if "dialogue" in report:
        tables += render_dialogue(report["dialogue"])
    if "facts" in report:
        tables.append(render_facts(report["facts"]))
    return tables


def render_dialogue(d: dict[str, Any]) -> list[Table]:
    c = d["config"]
    shares = list(d["shares"])
    contenders = list(d["shares"][shares[0]])
    table = Table(
        title=(
            f"memory, dialogue: {c['conversations']} conversations, {c['turns']} turns, {c['questions']} questions, "
            f"{c['page_tokens']}-token pages, {c['policy']}, {c['model']}, {d.get('seconds', 0):.0f} s"
        ),
        header_style="bold",
    )
    table.add_column("figure")
    for share in shares:
        for name in contenders:
            table.add_column(f"{name}\n{float(share):.0%}", justify="right")
    for key, label, fmt in DIALOGUE_ROWS:
        cells = []
        for share in shares:
            for name in contenders:
                value = d["shares"][share][name].get(key)
                cells.append("-" if value is None else fmt.format(value))
        table.add_row(label, *cells)
    kinds = Table(title="evidence recall by kind of question (per evidence turn / per question)", header_style="bold")
    kinds.add_column("kind")
    for share in shares:
        for name in contenders:
            kinds.add_column(f"{name}\n{float(share):.0%}", justify="right")
    for kind in sorted(c["kinds"]):
        cells = []
        for share in shares:
            for name in contenders:
                k = d["shares"][share][name]["by_kind"].get(kind)
                cells.append("-" if k is None else f"{k['evidence_recall']:.2f} / {k['question_recall']:.2f}")
        kinds.add_row(f"{kind} ({c['kinds'][kind]})", *cells)
    return [table, kinds]


def render_facts(report: dict[str, Any]) -> Table:
    c = report["config"]
    table = Table(
        title=(
            f"memory, facts: {c['facts']} facts, {c['questions']} questions, {c['history_tokens']} history tokens, "
            f"budget {c['budget_tokens']} ({c['budget_share']:.0%}), {c['page_tokens']}-token pages, "
            f"{c['policy']}, {c['model']}, {report.get('seconds', 0):.0f} s"
        ),
        header_style="bold",
    )
    table.add_column("figure")
    table.add_column("paged memory", justify="right")
    table.add_column("sliding window", justify="right")
    for key, label, fmt in ROWS:
        paged = fmt.format(report["paged"][key])
        window = report["window"]
        base = "-" if window is None or key in NOT_PAGED else fmt.format(window[key])
        table.add_row(label, paged, base)
    return table


def targets(report: dict[str, Any]) -> list[tuple[str, bool]]:
    """The memory targets, met or not."""
    out = []
    if "dialogue" in report and "0.10" in report["dialogue"]["shares"]:
        row = report["dialogue"]["shares"]["0.10"]
        if "kernel" in row:
            k, dense = row["kernel"], row["dense"]
            out.append((f"dialogue evidence recall at 10% ≥ 0.90 (got {k['evidence_recall']:.3f})", k["evidence_recall"] >= 0.90))
            gain = k["evidence_recall"] - dense["evidence_recall"]
            out.append((f"… and ≥ dense + 0.15 (dense {dense['evidence_recall']:.3f}, +{gain:.3f})", gain >= 0.15))
            out.append((f"turn fault p99 ≤ 50 ms (got {k['fault_p99_ms']:.1f})", k["fault_p99_ms"] <= 50))
            paging = k["page_in_p99_ms"] + k["page_out_p99_ms"]
            out.append((f"page out + page in p99 ≤ 20 ms/page (got {paging:.1f})", paging <= 20))
        over = sum(r.get("over_budget", 0) for row in report["dialogue"]["shares"].values() for r in row.values())
        out.append((f"dialogue prompts within their budget (over: {over})", over == 0))
    if "facts" in report:
        paged = report["facts"]["paged"]
        out.append((f"facts residency recall ≥ 0.95 (got {paged['residency_recall']:.3f})", paged["residency_recall"] >= 0.95))
        paging = paged["page_out_p99_ms"] + paged["page_in_p99_ms"]
        out.append((f"facts page out + page in p99 ≤ 20 ms/page (got {paging:.1f})", paging <= 20))
        out.append((f"facts turn fault p99 ≤ 50 ms (got {paged['fault_p99_ms']:.1f})", paged["fault_p99_ms"] <= 50))
        budget = report["facts"]["config"]["budget_tokens"]
        out.append(
            (f"facts prompts within the budget (max {paged['prompt_tokens_max']} of {budget})", paged["over_budget"] == 0)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.facts < 2 or args.questions < 1 or args.conversations < 1 or args.sessions < 4:
        print("need at least 2 facts, 1 question, 1 conversation and 4 sessions", file=sys.stderr)
        return 2
    console = Console()
    report = trio.run(bench, args, console)
    for table in render(report):
        console.print(table)
    for label, met in targets(report):
        console.print(f"{'met' if met else 'NOT met'}: {label}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.json}")
    return 0
