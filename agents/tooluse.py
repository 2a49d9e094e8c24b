"""The tool-calling loop: the model uses tools, and every tool call is a syscall.

    run = await sys.tools.run("What is 17 * 23?", tools=["calc"])
    run.answer, run.stopped, run.steps

Each turn the model sees the task, the tools it may use (name, description and arguments, from
the syscalls' JSON schemas via tools.list) and what happened so far, and replies with one JSON
object:
    {"tool": "calc", "arguments": {"expression": "17 * 23"}}    a call
    {"answer": "17 * 23 = 391"}                                  the end
The first JSON object in the reply counts (code fences and chatter around it are ignored). A
reply that is not such an object, names a tool not offered, or whose arguments the syscall
refuses (EINVAL, E2BIG) gets a corrective message saying exactly what was wrong;
`max_retries` such replies in a row end the run ("malformed"). A valid call runs as a syscall,
so capabilities, quotas and timeouts apply, and its result, or its error, goes back to the
model as the next message. At most `max_steps` calls ("max_steps"); a process that loops
anyway is stopped by its quota.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from llmos.abi.errors import Errno, SyscallError

MAX_RESULT_CHARS = 2000  # of a tool result shown to the model
BAD_ARGUMENTS = (Errno.EINVAL, Errno.E2BIG)
RETRY_TEMPERATURE = 0.7
Chat = Callable[..., Awaitable[str]]

PROTOCOL = """You can call tools. Reply with exactly one JSON object and nothing else.
To call a tool: {"tool": "<tool name>", "arguments": {<arguments>}}
To give the final answer: {"answer": "<the answer>"}

Tools:
"""


@dataclass
class ToolStep:
    tool: str
    arguments: dict[str, Any]
    result: Any = None  # the syscall's response, as JSON
    error: str | None = None  # "[ERRNO] message" when the call failed


@dataclass
class ToolRun:
    answer: str | None
    stopped: str  # "answer" | "max_steps" | "malformed"
    steps: list[ToolStep] = field(default_factory=list)
    corrections: list[str] = field(default_factory=list)  # corrective messages the model was sent
    messages: list[dict[str, str]] = field(default_factory=list)  # the whole conversation


@dataclass
class ToolCall:
    tool: str
    arguments: dict[str, Any]


@dataclass
class Answer:
    text: str


class Malformed(ValueError):
    """The model's reply is not a valid tool call or answer; the message tells it why."""


async def run_tools(
    sys: Any,
    task: str,
    tools: list[str],
    *,
    max_steps: int = 6,
    max_retries: int = 2,
    max_tokens: int = 128,
    system: str | None = None,
    examples: list[dict[str, str]] | None = None,
    chat: Chat | None = None,
) -> ToolRun:
    """Let the model work on `task` with the tools matching `tools` (names or patterns).
    `chat(messages, max_tokens, **sampling) -> reply text` is the model; the shared one
    (llm.chat) unless given, e.g. to route tool use to another model."""
    chat = chat or _llm_chat(sys)
    offered = {t.name: t for t in await sys.tools.list(*tools)}
    if not offered:
        raise SyscallError(Errno.EPERM, f"no tool the process may use matches {tools}")
    messages = [
        {"role": "system", "content": (system + "\n\n" if system else "") + PROTOCOL + describe_tools(offered.values())},
        *(examples if examples is not None else example_turns(offered)),
        {"role": "user", "content": task},
    ]
    run = ToolRun(answer=None, stopped="max_steps", messages=messages)
    retries = 0
    while True:
        # Greedy first; a retry samples (seeded, so runs repeat) lest the model say the same again.
        sampling = {"temperature": RETRY_TEMPERATURE, "seed": retries} if retries else {}
        reply = await chat(list(messages), max_tokens, **sampling)
        try:
            action = parse_reply(reply, offered)
            if isinstance(action, Answer):
                messages.append({"role": "assistant", "content": json.dumps({"answer": action.text})})
                run.answer, run.stopped = action.text, "answer"
                return run
            if len(run.steps) == max_steps:
                return run
            step = await _call(sys, action)
        except Malformed as exc:
            retries += 1
            run.corrections.append(str(exc))
            messages += [{"role": "assistant", "content": reply[:MAX_RESULT_CHARS]}, {"role": "user", "content": str(exc)}]
            if retries > max_retries:
                run.stopped = "malformed"
                return run
            continue
        retries = 0
        run.steps.append(step)
        call_json = json.dumps({"tool": step.tool, "arguments": step.arguments})
        messages += [{"role": "assistant", "content": call_json}, {"role": "user", "content": _result_message(step)}]


def _llm_chat(sys: Any) -> Chat:
    async def chat(messages: list[dict[str, str]], max_tokens: int, **sampling: Any) -> str:
        return (await sys.llm.chat(messages, max_tokens=max_tokens, **sampling)).content

    return chat


async def _call(sys: Any, call: ToolCall) -> ToolStep:
    try:
        response = await sys.call(call.tool, **call.arguments)
    except SyscallError as exc:
        if exc.errno in BAD_ARGUMENTS:
            raise Malformed(f"The arguments for {call.tool} are wrong: {exc.message}. Reply with a corrected call.") from None
        if exc.errno is Errno.EKILLED:
            raise
        return ToolStep(call.tool, call.arguments, error=f"[{exc.errno.value}] {exc.message}")
    return ToolStep(call.tool, call.arguments, result=response.model_dump(mode="json"))


def parse_reply(reply: str, offered: dict[str, Any]) -> ToolCall | Answer:
    """The action in a model's reply, or Malformed saying what to fix."""
    obj = _first_json_object(reply)
    if obj is None:
        problem = "is not valid JSON" if "{" in reply else "has no JSON object"
        raise Malformed(f"Your reply {problem}. Reply with one JSON object only: {_call_example(offered)}")
    if "answer" in obj and "tool" not in obj:
        answer = obj["answer"]
        return Answer(answer if isinstance(answer, str) else json.dumps(answer))
    name = obj.get("tool")
    if not isinstance(name, str):
        raise Malformed('The JSON object needs "tool" (the name of a tool, to call it) or "answer" (to finish).')
    if name not in offered:
        raise Malformed(f"There is no tool named {name!r}. The tools are: {', '.join(offered)}. {_call_example(offered)}")
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        raise Malformed(f'"arguments" must be a JSON object, like {{"name": value}}; got {json.dumps(arguments)[:100]}.')
    return ToolCall(name, arguments)


def _call_example(offered: dict[str, Any]) -> str:
    t = next(iter(offered.values()))
    example = {"tool": t.name, "arguments": _example_arguments(t.parameters)}
    return f"To call a tool, reply like {json.dumps(example)}"


def _first_json_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    return None


def describe_tools(tools: Any) -> str:
    """One line per tool: name(arguments) - description, arguments from its JSON schema."""
    lines = []
    for t in tools:
        props = t.parameters.get("properties", {})
        required = set(t.parameters.get("required", []))
        args = ", ".join(f"{name}: {_type_of(spec)}{'' if name in required else ' (optional)'}" for name, spec in props.items())
        description = " ".join(t.description.split())[:300]
        lines.append(f"- {t.name}({args}): {description}")
    return "\n".join(lines)


def _type_of(spec: dict[str, Any]) -> str:
    if "anyOf" in spec:
        return " | ".join(_type_of(s) for s in spec["anyOf"] if s.get("type") != "null") or "any"
    kind = spec.get("type")
    if kind == "array":
        return f"list of {_type_of(spec.get('items', {}))}"
    return kind if isinstance(kind, str) else "any"


def example_turns(offered: dict[str, Any]) -> list[dict[str, str]]:
    """A worked example, as conversation turns (small models follow a shown pattern far better
    than a described one): a calc call when calc is offered, else the first tool's."""
    if "calc" in offered:
        question, call = "What is 2 + 2?", {"tool": "calc", "arguments": {"expression": "2 + 2"}}
        result, answer = {"result": 4}, "2 + 2 = 4"
    else:
        t = next(iter(offered.values()))
        question, call = f"Use {t.name}.", {"tool": t.name, "arguments": _example_arguments(t.parameters)}
        result, answer = {"result": "..."}, f"Done with {t.name}."
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": json.dumps(call)},
        {"role": "user", "content": f"Result of {call['tool']}: {json.dumps(result)}"},
        {"role": "assistant", "content": json.dumps({"answer": answer})},
    ]


def _example_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    placeholders = {"string": "text", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    props, required = schema.get("properties", {}), schema.get("required", [])
    return {name: placeholders.get(_type_of(props[name]).split(" ")[0], "...") for name in required if name in props}


def _result_message(step: ToolStep) -> str:
    if step.error is not None:
        return f"{step.tool} failed: {step.error}"
    text = json.dumps(step.result, ensure_ascii=False)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + " ...(cut)"
    return f"Result of {step.tool}: {text}"
