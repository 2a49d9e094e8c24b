"""The tool-calling loop: the model uses tools, and every tool call is a syscall.

    run = await sys.tools.run("What is 17 * 23?", tools=["calc"], tool_choice="required")
    run.answer, run.stopped, run.steps

Each turn the model sees the task, the tools it may use (name, description and arguments, from
the syscalls' JSON schemas via tools.list, MCP-mounted tools with their servers' schemas) and
what happened so far, and replies with one JSON object (llmos.abi.toolcall):
    {"tool": "calc", "arguments": {"expression": "17 * 23"}}    a call
    {"answer": "17 * 23 = 391"}                                  the end
Decoding is constrained to exactly those replies (llm.chat's response_format with
`reply_schema`): a call names an offered tool and its arguments are valid for that tool's
schema, so every reply parses. `tool_choice`: "auto" (a call or the answer), "required" (the
first reply is a call), a tool's name (the first reply calls it), "none" (answer at once).

A valid call runs as a syscall, so capabilities, quotas and timeouts apply, and its result, or
its error, goes back to the model as the next message. Corrective retries remain for what the
schema cannot express: the syscall refused the arguments (EINVAL, E2BIG), or the reply was cut
off by max_tokens; `max_retries` such replies in a row end the run ("malformed"). At most
`max_steps` calls ("max_steps"); a process that loops anyway is stopped by its quota.
With `constrained=False` (or a `chat` that cannot constrain) the first JSON object in the reply
counts, code fences and chatter around it ignored, and a malformed reply gets a correction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.toolcall import (  # noqa: F401  (describe_tools, example_turns: re-exported)
    Answer,
    ToolCall,
    describe_tools,
    example_arguments,
    example_turns,
    reply_schema,
    result_message,
    system_prompt,
)

MAX_RESULT_CHARS = 2000  # of a tool result shown to the model
BAD_ARGUMENTS = (Errno.EINVAL, Errno.E2BIG)
RETRY_TEMPERATURE = 0.7
CHOICES = ("auto", "required", "none")
Chat = Callable[..., Awaitable[str]]


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


class Malformed(ValueError):
    """The model's reply is not a valid tool call or answer; the message tells it why."""


async def run_tools(
    sys: Any,
    task: str,
    tools: list[str],
    *,
    tool_choice: str = "auto",
    constrained: bool = True,
    max_steps: int = 6,
    max_retries: int = 2,
    max_tokens: int = 256,
    system: str | None = None,
    examples: list[dict[str, str]] | None = None,
    chat: Chat | None = None,
) -> ToolRun:
    """Let the model work on `task` with the tools matching `tools` (names or patterns).
    `chat(messages, max_tokens, **sampling) -> reply text` is the model; the shared one
    (llm.chat) unless given, e.g. to route tool use to another model. When constrained, it is
    also passed `response_format`."""
    chat = chat or _llm_chat(sys)
    offered = {t.name: t for t in await sys.tools.list(*tools)}
    if not offered:
        raise SyscallError(Errno.EPERM, f"no tool the process may use matches {tools}")
    if tool_choice not in CHOICES and tool_choice not in offered:
        raise SyscallError(Errno.EINVAL, f"tool_choice: {tool_choice!r} is none of {', '.join(CHOICES)} nor an offered tool")
    messages = [
        {"role": "system", "content": (system + "\n\n" if system else "") + system_prompt(offered.values())},
        *(examples if examples is not None else example_turns(offered.values())),
        {"role": "user", "content": task},
    ]
    run = ToolRun(answer=None, stopped="max_steps", messages=messages)
    retries = 0
    while True:
        # Greedy first; a retry samples (seeded, so runs repeat) lest the model say the same again.
        sampling: dict[str, Any] = {"temperature": RETRY_TEMPERATURE, "seed": retries} if retries else {}
        if constrained:
            # "required" and a named tool hold for the first reply; after a call the model may answer.
            choice = tool_choice if not run.steps or tool_choice == "none" else "auto"
            sampling["response_format"] = {"type": "json_schema", "json_schema": reply_schema(offered.values(), choice)}
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
        return Answer(Answer(obj["answer"]).text)
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
    example = {"tool": t.name, "arguments": example_arguments(t.parameters)}
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


def _result_message(step: ToolStep) -> str:
    if step.error is not None:
        return f"{step.tool} failed: {step.error}"
    text = json.dumps(step.result, ensure_ascii=False)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + " ...(cut)"
    return result_message(step.tool, text)
