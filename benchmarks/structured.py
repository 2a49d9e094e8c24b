"""Structured-output benchmark: does constrained decoding make replies valid, right and fast?

    llmos bench structured                      # 210 tasks + the 30 calculator questions
    llmos bench structured --tasks 70 --json out.json

1. A fixed suite of generated tasks (seeded: the same every run) in seven families, each with
   its JSON schema: people (nested object, integer range, optional field), sentiment (enum),
   colours (array of enums), weather readings (numbers with ranges), products (optional
   field, enum currency, price range), events (date pattern, array of names) and tool choice
   (one of five tools, each with its own argument schema, as the tool loop constrains it).
   Every task runs twice in the same kernel, with the same prompt (which shows the schema):
   constrained (response_format) and not. Per mode: validity (the reply, code fences
   stripped, parses and validates against the schema), task accuracy (the fields the text
   states came out right), tokens/s over the mode's wall time (all of its tasks submitted at
   once, up to --batch at a time).
2. The calculator task: `sys.tools.run(question, tools=["calc"], tool_choice="required")` on
   30 arithmetic questions that say "use the calculator", constrained and not; correct when
   the answer contains the exact result.
3. Masking cost: the share of a decode step spent on masks (computing them with the grammar
   library, applying them, advancing the matchers), from the engine's own counters, with 1
   and with --batch sequences decoding, every one constrained. Each is measured over its
   own phase of the run; the machine's load is the same for the step and the mask in it.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import trio
from rich.console import Console
from rich.table import Table

FIRST = ["Maria", "John", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom", "Sofia", "Ivan", "Grace", "Ahmed"]
LAST = ["Lopez", "Smith", "Tanaka", "Haddad", "Berg", "Silva", "Patel", "Brown", "Rossi", "Petrov", "Kim", "Khan"]
PLACES = [("Madrid", "Spain"), ("Paris", "France"), ("Tokyo", "Japan"), ("Cairo", "Egypt"), ("Oslo", "Norway"),
          ("Lima", "Peru"), ("Delhi", "India"), ("Boston", "USA"), ("Rome", "Italy"), ("Berlin", "Germany")]  # fmt: skip
COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
PRODUCTS = ["lamp", "chair", "kettle", "backpack", "notebook", "headphones", "umbrella", "mug"]
BRANDS = ["Acme", "Nordic", "Zen", "Apex", "Luna"]
EVENTS = ["team meeting", "birthday party", "project review", "dentist visit", "book club", "yoga class"]
REVIEWS = {
    "positive": ["I love it, works perfectly.", "Excellent quality, very happy!", "Great value and fast delivery."],
    "negative": ["Broke after one day, terrible.", "Awful, I want a refund.", "Very disappointing and slow."],
    "neutral": ["It arrived on Tuesday.", "The box contains one item.", "It is the same as the old model."],
}


@dataclass
class Task:
    family: str
    prompt: str
    schema: dict[str, Any]
    check: Callable[[Any], bool]  # is the parsed reply right?
    tools: list[dict[str, Any]] | None = None  # tool-choice tasks: the offered tools


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props), "additionalProperties": False}


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, str) and a.strip().lower() == str(b).lower()


PERSON = _obj(
    {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "address": _obj({"city": {"type": "string"}, "country": {"type": "string"}}),
        "email": {"type": "string"},
    },
    ["name", "age", "address"],
)
SENTIMENT = _obj({"sentiment": {"enum": ["positive", "negative", "neutral"]}})
COLORS_SCHEMA = _obj({"colors": {"type": "array", "items": {"enum": COLORS}, "minItems": 1, "maxItems": 4}})  # uniqueItems: llguidance refuses it (EINVAL)
WEATHER = _obj({
    "temperature_c": {"type": "number", "minimum": -60, "maximum": 60},
    "humidity_pct": {"type": "integer", "minimum": 0, "maximum": 100},
    "wind_kmh": {"type": "integer", "minimum": 0, "maximum": 300},
})  # fmt: skip
PRODUCT = _obj(
    {
        "product": {"type": "string"},
        "brand": {"type": "string"},
        "price": {"type": "number", "minimum": 0, "maximum": 10000},
        "currency": {"enum": ["USD", "EUR", "GBP"]},
        "discount_pct": {"type": "integer", "minimum": 0, "maximum": 90},
    },
    ["product", "brand", "price", "currency"],
)
EVENT = _obj({
    "event": {"type": "string"},
    "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
    "attendees": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5},
})  # fmt: skip
TOOLS = [
    {"name": "get_weather", "description": "Current weather in a city.", "parameters": _obj({"city": {"type": "string"}})},
    {"name": "calc", "description": "Evaluate an arithmetic expression.", "parameters": _obj({"expression": {"type": "string"}})},
    {"name": "convert_currency", "description": "Convert an amount of money between currencies.",
     "parameters": _obj({"amount": {"type": "number"}, "from": {"enum": ["USD", "EUR", "GBP", "JPY"]}, "to": {"enum": ["USD", "EUR", "GBP", "JPY"]}})},
    {"name": "send_email", "description": "Send an email.", "parameters": _obj({"to": {"type": "string"}, "subject": {"type": "string"}})},
    {"name": "set_timer", "description": "Set a timer.", "parameters": _obj({"minutes": {"type": "integer", "minimum": 1, "maximum": 1440}})},
]  # fmt: skip


def make_suite(n: int = 210, seed: int = 7) -> list[Task]:
    """`n` tasks, the families in turn, all drawn from one seeded generator."""
    rng = random.Random(seed)
    makers = [_person, _sentiment, _colors, _weather, _product, _event, _tool]
    return [makers[i % len(makers)](rng) for i in range(n)]


def _person(rng: random.Random) -> Task:
    name, age, (city, country) = f"{rng.choice(FIRST)} {rng.choice(LAST)}", rng.randint(18, 90), rng.choice(PLACES)
    text = f"{name} is {age} years old and lives in {city}, {country}."
    check = lambda v: _same(v["name"], name) and v["age"] == age and _same(v["address"]["city"], city)  # noqa: E731
    return Task("person", f"Extract the person as JSON: {text}", PERSON, check)


def _sentiment(rng: random.Random) -> Task:
    label = rng.choice(list(REVIEWS))
    review = rng.choice(REVIEWS[label])
    return Task("sentiment", f"Classify the sentiment of this review as JSON: \"{review}\"", SENTIMENT, lambda v: v["sentiment"] == label)


def _colors(rng: random.Random) -> Task:
    picked = rng.sample(COLORS, rng.randint(1, 3))
    thing = rng.choice(["flag", "car", "painting", "garden", "poster"])
    text = f"The {thing} is " + " and ".join(picked) + "."
    return Task("colors", f"List the colors mentioned as JSON: {text}", COLORS_SCHEMA, lambda v: set(v["colors"]) == set(picked))


def _weather(rng: random.Random) -> Task:
    t, h, w = rng.randint(-20, 40), rng.randint(10, 95), rng.randint(0, 80)
    text = f"It is {t} degrees Celsius with {h} percent humidity and wind at {w} km/h."
    check = lambda v: v["temperature_c"] == t and v["humidity_pct"] == h and v["wind_kmh"] == w  # noqa: E731
    return Task("weather", f"Extract the weather reading as JSON: {text}", WEATHER, check)


def _product(rng: random.Random) -> Task:
    product, brand = rng.choice(PRODUCTS), rng.choice(BRANDS)
    price, currency = rng.randint(5, 400), rng.choice(["USD", "EUR", "GBP"])
    sign = {"USD": "dollars", "EUR": "euros", "GBP": "pounds"}[currency]
    text = f"The {brand} {product} costs {price} {sign}."
    check = lambda v: _same(v["product"], product) and _same(v["brand"], brand) and v["price"] == price and v["currency"] == currency  # noqa: E731
    return Task("product", f"Extract the product as JSON: {text}", PRODUCT, check)


def _event(rng: random.Random) -> Task:
    event = rng.choice(EVENTS)
    date = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    people = rng.sample(FIRST, rng.randint(1, 3))
    text = f"The {event} is on {date} with " + " and ".join(people) + "."
    check = lambda v: v["date"] == date and {p.lower() for p in v["attendees"]} == {p.lower() for p in people}  # noqa: E731
    return Task("event", f"Extract the event as JSON: {text}", EVENT, check)


def _tool(rng: random.Random) -> Task:
    from llmos.abi.toolcall import reply_schema

    kind = rng.randrange(5)
    city = rng.choice(PLACES)[0]
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    amount, cur = rng.randint(5, 500), rng.sample(["USD", "EUR", "GBP", "JPY"], 2)
    person, minutes = rng.choice(FIRST).lower(), rng.randint(2, 90)
    prompt, want = [
        (f"What's the weather like in {city}?", ("get_weather", lambda x: _same(x["city"], city))),
        (f"What is {a} * {b}?", ("calc", lambda x: x["expression"].replace(" ", "") == f"{a}*{b}")),
        (f"Convert {amount} {cur[0]} to {cur[1]}.", ("convert_currency", lambda x: x["amount"] == amount and x["from"] == cur[0] and x["to"] == cur[1])),
        (f"Email {person}@example.com with the subject 'Lunch'.", ("send_email", lambda x: _same(x["to"], f"{person}@example.com"))),
        (f"Set a timer for {minutes} minutes.", ("set_timer", lambda x: x["minutes"] == minutes)),
    ][kind]  # fmt: skip
    tool, args_ok = want
    schema = reply_schema([_Tool(**t) for t in TOOLS], "required")
    check = lambda v: v.get("tool") == tool and args_ok(v["arguments"])  # noqa: E731
    return Task("tool", prompt, schema, check, tools=TOOLS)


@dataclass
class _Tool:
    name: str
    description: str
    parameters: dict[str, Any]


def messages_for(task: Task) -> list[dict[str, str]]:
    """The same prompt for both modes: the instruction shows the schema (or, for tool choice,
    the tools and the reply format, as the tool loop does)."""
    from llmos.abi.toolcall import system_prompt

    if task.tools is not None:
        return [{"role": "system", "content": system_prompt([_Tool(**t) for t in task.tools])}, {"role": "user", "content": task.prompt}]
    system = "Reply with one JSON object and nothing else, valid for this JSON schema:\n" + json.dumps(task.schema)
    return [{"role": "system", "content": system}, {"role": "user", "content": task.prompt}]


def parse(text: str) -> Any:
    """The reply as JSON, code fences stripped, or None."""
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    try:
        return json.loads(fenced.group(1) if fenced else body)
    except ValueError:
        return None


def judge(task: Task, text: str) -> tuple[bool, bool]:
    """(valid, right) for a reply."""
    import jsonschema

    value = parse(text)
    if value is None:
        return False, False
    try:
        jsonschema.validate(value, task.schema)
    except jsonschema.ValidationError:
        return False, False
    try:
        return True, bool(task.check(value))
    except (KeyError, TypeError, AttributeError):
        return True, False


@dataclass
class ModeResult:
    valid: int = 0
    right: int = 0
    tasks: int = 0
    tokens: int = 0
    seconds: float = 0.0
    by_family: dict[str, list[int]] = field(default_factory=dict)  # family -> [tasks, valid, right]
    replies: list[dict[str, Any]] = field(default_factory=list)


async def run_suite(kernel: Any, tasks: list[Task], constrained: bool, max_tokens: int, progress: Any) -> ModeResult:
    from llmos.runtime import session

    result = ModeResult(tasks=len(tasks))
    replies: list[Any] = [None] * len(tasks)
    done = 0

    async def one(i: int, task: Task) -> None:
        nonlocal done
        fmt = {"type": "json_schema", "json_schema": task.schema} if constrained else None
        sh = session(kernel, f"bench-{i}")
        try:
            replies[i] = await sh.llm.chat(messages_for(task), max_tokens=max_tokens, response_format=fmt)
        finally:
            kernel.end_session(kernel.procs.get(sh.pid))
        done += 1
        progress(f"{'constrained' if constrained else 'unconstrained'}: {done}/{len(tasks)}")

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i, task in enumerate(tasks):
            nursery.start_soon(one, i, task)
    result.seconds = time.perf_counter() - started
    for task, reply in zip(tasks, replies):
        valid, right = judge(task, reply.content)
        result.valid += valid
        result.right += right
        result.tokens += reply.usage.completion_tokens
        counts = result.by_family.setdefault(task.family, [0, 0, 0])
        counts[0], counts[1], counts[2] = counts[0] + 1, counts[1] + valid, counts[2] + right
        result.replies.append({"family": task.family, "prompt": task.prompt, "reply": reply.content, "valid": valid, "right": right,
                               "finish": reply.finish_reason})  # fmt: skip
    return result


def calculator_questions(n: int = 30, seed: int = 13) -> list[tuple[str, float]]:
    """Arithmetic questions that say to use the calculator, with their results."""
    rng = random.Random(seed)
    forms = ["Use the calculator to compute {e}.", "What is {e}? Use the calculator.", "Use the calculator: how much is {e}?"]
    out = []
    for i in range(n):
        a, b, c = rng.randint(11, 99), rng.randint(11, 99), rng.randint(2, 9)
        e, v = [
            (f"{a} * {b}", a * b),
            (f"{a * 7} + {b * 13}", a * 7 + b * 13),
            (f"{a * b} - {b * c}", a * b - b * c),
            (f"{a * c} / {c}", a),
            (f"({a} + {b}) * {c}", (a + b) * c),
        ][i % 5]  # fmt: skip
        out.append((forms[i % 3].format(e=e), v))
    return out


def answer_is(answer: str | None, value: float) -> bool:
    numbers = re.findall(r"-?\d+(?:\.\d+)?", (answer or "").replace(",", ""))
    return any(float(x) == value for x in numbers)


async def run_calculator(kernel: Any, constrained: bool, progress: Any) -> dict[str, Any]:
    from llmos.runtime import session

    questions = calculator_questions()
    runs: list[Any] = [None] * len(questions)

    async def one(i: int, question: str) -> None:
        sh = session(kernel, f"calc-{i}")
        try:
            runs[i] = await sh.tools.run(question, tools=["calc"], tool_choice="required", constrained=constrained)
        finally:
            kernel.end_session(kernel.procs.get(sh.pid))
        progress(f"calculator ({'constrained' if constrained else 'unconstrained'}): {sum(r is not None for r in runs)}/{len(questions)}")

    async with trio.open_nursery() as nursery:
        for i, (q, _) in enumerate(questions):
            nursery.start_soon(one, i, q)
    right = [answer_is(r.answer, v) for r, (_, v) in zip(runs, questions)]
    return {
        "questions": len(questions),
        "correct": sum(right),
        "called_calc": sum(bool(r.steps) for r in runs),
        "malformed": sum(r.stopped == "malformed" for r in runs),
        "corrections_per_run": round(sum(len(r.corrections) for r in runs) / len(runs), 2),
        "runs": [{"question": q, "answer": r.answer, "stopped": r.stopped, "steps": [(s.tool, s.arguments, s.result, s.error) for s in r.steps],
                  "right": ok} for (q, _), r, ok in zip(questions, runs, right)],  # fmt: skip
    }


async def mask_cost(kernel: Any, tasks: list[Task], batch: int, max_tokens: int) -> dict[str, float]:
    """Masking's share of the decode steps while `batch` constrained sequences decode."""
    stats = kernel.engine.stats
    before = (stats.mask_time, stats.masked_steps, stats.masked_step_time, stats.masked_rows)
    for start in range(0, len(tasks), batch):
        group = tasks[start : start + batch]
        await run_suite(kernel, group, True, max_tokens, lambda _: None)
    mask, steps, step_time, rows = (a - b for a, b in zip((stats.mask_time, stats.masked_steps, stats.masked_step_time, stats.masked_rows), before))
    return {
        "batch": batch,
        "steps": steps,
        "rows_per_step": round(rows / max(1, steps), 1),
        "mask_ms_per_step": round(1000 * mask / max(1, steps), 3),
        "step_ms": round(1000 * step_time / max(1, steps), 2),
        "mask_share": round(mask / step_time, 4) if step_time else 0.0,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmos bench structured", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=210, help="tasks in the suite (seven families in turn)")
    p.add_argument("--batch", type=int, default=32, help="sequences decoded together")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--no-calculator", action="store_true", help="skip the 30 calculator questions")
    p.add_argument("--model", default=None, help="model spec (default: the kernel's default model)")
    p.add_argument("--json", metavar="PATH", help="write the figures (and every reply) as JSON")
    return p


async def bench(args: argparse.Namespace, console: Console, backend: Any = None) -> dict[str, Any]:
    from llmos.config import KernelConfig
    from llmos.runtime import boot

    config = KernelConfig(max_batch=args.batch) if args.model is None else KernelConfig(model=args.model, max_batch=args.batch)
    tasks = make_suite(args.tasks)
    report: dict[str, Any] = {"tasks": len(tasks), "batch": args.batch, "max_tokens": args.max_tokens}
    with console.status("booting") as status:
        progress = lambda text: status.update(text)  # noqa: E731
        async with boot(config, backend=backend) as kernel:
            report["model"] = kernel.backend.name
            # warm up: the tokenizer's tables for the grammar library are built on first use
            await run_suite(kernel, tasks[:1], True, 8, progress)
            for mode in ("unconstrained", "constrained"):
                r = await run_suite(kernel, tasks, mode == "constrained", args.max_tokens, progress)
                report[mode] = {
                    "valid": r.valid, "right": r.right, "tasks": r.tasks, "validity": round(r.valid / r.tasks, 4),
                    "accuracy": round(r.right / r.tasks, 4), "tokens": r.tokens, "seconds": round(r.seconds, 2),
                    "tokens_per_s": round(r.tokens / r.seconds, 1), "by_family": r.by_family, "replies": r.replies,
                }  # fmt: skip
            progress("masking cost, batch 1")
            report["mask_b1"] = await mask_cost(kernel, tasks[:4], 1, args.max_tokens)
            progress(f"masking cost, batch {args.batch}")
            report[f"mask_b{args.batch}"] = await mask_cost(kernel, tasks[: args.batch], args.batch, args.max_tokens)
            if not args.no_calculator:
                report["calculator"] = {
                    mode: await run_calculator(kernel, mode == "constrained", progress) for mode in ("unconstrained", "constrained")
                }
    return report


def render(report: dict[str, Any]) -> list[Table]:
    suite = Table(title=f"structured output: {report['tasks']} tasks, {report['model']}, batch {report['batch']}")
    for col in ("mode", "valid", "right", "tokens/s", "seconds"):
        suite.add_column(col, justify="right" if col != "mode" else "left")
    for mode in ("unconstrained", "constrained"):
        r = report[mode]
        suite.add_row(mode, f"{r['validity']:.1%}", f"{r['accuracy']:.1%}", f"{r['tokens_per_s']:.1f}", f"{r['seconds']:.0f}")
    families = Table(title="by family (valid / right, of tasks)")
    families.add_column("family")
    for mode in ("unconstrained", "constrained"):
        families.add_column(mode, justify="right")
    for family in report["constrained"]["by_family"]:
        cells = []
        for mode in ("unconstrained", "constrained"):
            n, valid, right = report[mode]["by_family"][family]
            cells.append(f"{valid}/{right} of {n}")
        families.add_row(family, *cells)
    mask = Table(title="masking cost per decode step (every sequence constrained)")
    for col in ("batch", "steps", "rows/step", "mask ms", "step ms", "share"):
        mask.add_column(col, justify="right")
    for key in ("mask_b1", f"mask_b{report['batch']}"):
        m = report[key]
        mask.add_row(str(m["batch"]), str(m["steps"]), str(m["rows_per_step"]), f"{m['mask_ms_per_step']:.3f}", f"{m['step_ms']:.1f}",
                     f"{m['mask_share']:.2%}")  # fmt: skip
    tables = [suite, families, mask]
    if "calculator" in report:
        calc = Table(title="calculator: 30 questions, tools.run(tools=[\"calc\"], tool_choice=\"required\")")
        for col in ("mode", "correct", "called calc", "malformed", "corrections/run"):
            calc.add_column(col, justify="right" if col != "mode" else "left")
        for mode, c in report["calculator"].items():
            calc.add_row(mode, f"{c['correct']}/{c['questions']}", str(c["called_calc"]), str(c["malformed"]), str(c["corrections_per_run"]))
        tables.append(calc)
    return tables


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    report = trio.run(bench, args, console)
    for table in render(report):
        console.print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        console.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
