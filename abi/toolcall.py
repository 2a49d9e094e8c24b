"""How a model calls tools: the reply format, its JSON schema, and how tools are shown to it.

The model replies with one JSON object:
    {"tool": "calc", "arguments": {"expression": "17 * 23"}}     a call
    {"tool_calls": [{"tool": ..., "arguments": ...}, ...]}      several calls (when allowed)
    {"answer": "17 * 23 = 391"}                                 the answer
`reply_schema` is the JSON schema of exactly the replies allowed: each offered tool's arguments
valid for that tool's own schema. Decoding is constrained to it (llm.chat's response_format),
so a reply always parses. The tool loop (agents/tooluse.py) and the OpenAI-compatible HTTP API
(servers/openai_tools.py) both speak it, which is why it is part of the ABI. Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

PROTOCOL = """You can call tools. Reply with exactly one JSON object and nothing else.
To call a tool: {"tool": "<tool name>", "arguments": {<arguments>}}
To give the final answer: {"answer": "<the answer>"}

Tools:
"""
PARALLEL = 'To call several tools at once: {"tool_calls": [{"tool": ..., "arguments": ...}, ...]}\n'


class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments


@dataclass
class ToolCall:
    tool: str
    arguments: dict[str, Any]


@dataclass
class Answer:
    value: Any  # a string, or any JSON value when the answer has a schema of its own

    @property
    def text(self) -> str:
        return self.value if isinstance(self.value, str) else json.dumps(self.value)


def reply_schema(
    tools: Iterable[Tool],
    choice: str = "auto",
    parallel: bool = False,
    answer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON schema of the replies allowed. `choice`: "auto" (a call or the answer),
    "required" (a call), "none" (the answer), or a tool's name (one call of that tool).
    `parallel` allows a list of calls (with "auto" and "required"); `answer` is the answer's own schema (a string if None)."""
    tools = list(tools)
    defs: dict[str, Any] = {}
    calls = []
    for i, t in enumerate(tools):
        if choice not in ("auto", "required", "none") and t.name != choice:
            continue
        arguments = _hoist_defs(t.parameters or {"type": "object"}, f"t{i}_", defs)
        calls.append({
            "type": "object",
            "properties": {"tool": {"const": t.name}, "arguments": arguments},
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        })  # fmt: skip
    if choice not in ("auto", "required", "none") and not calls:
        raise ValueError(f"tool_choice names {choice!r}, which is not among the tools")
    branches: list[dict[str, Any]] = []
    if choice != "none":
        branches += calls
        if parallel and calls and choice in ("auto", "required"):
            branches.append({
                "type": "object",
                "properties": {"tool_calls": {"type": "array", "items": {"anyOf": calls}, "minItems": 1}},
                "required": ["tool_calls"],
                "additionalProperties": False,
            })  # fmt: skip
    if choice in ("auto", "none"):
        branches.append({
            "type": "object",
            "properties": {"answer": answer if answer is not None else {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        })  # fmt: skip
    schema: dict[str, Any] = {"anyOf": branches} if len(branches) > 1 else branches[0]
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def interpret(obj: Any) -> list[ToolCall] | Answer:
    """The calls or the answer in a parsed reply (one that matches a reply schema)."""
    if not isinstance(obj, dict):
        raise ValueError("a reply is a JSON object")
    if "answer" in obj and "tool" not in obj:
        return Answer(obj["answer"])
    items = obj["tool_calls"] if isinstance(obj.get("tool_calls"), list) else [obj]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("tool"), str):
            raise ValueError('a call needs "tool": the name of a tool')
        arguments = item.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ValueError('"arguments" must be a JSON object')
        calls.append(ToolCall(item["tool"], arguments))
    return calls


def system_prompt(tools: Iterable[Tool], parallel: bool = False) -> str:
    """The instructions and the tool list a model is shown. `parallel` adds the line about
    several calls in one reply (the reply schema allows them either way; SmolLM2-135M chose
    the wrong tool more often with that line in its prompt, so callers pass it when asked)."""
    return PROTOCOL.replace("Tools:\n", (PARALLEL if parallel else "") + "Tools:\n") + describe_tools(tools)


def describe_tools(tools: Iterable[Tool]) -> str:
    """One line per tool: name(arguments) - description, arguments from its JSON schema."""
    lines = []
    for t in tools:
        params = t.parameters or {}
        props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
        required = set(r for r in params.get("required", []) if isinstance(r, str)) if isinstance(params.get("required"), list) else set()
        args = ", ".join(f"{name}: {_type_of(spec)}{'' if name in required else ' (optional)'}" for name, spec in props.items())
        description = " ".join((t.description or "").split())[:300]
        lines.append(f"- {t.name}({args}): {description}")
    return "\n".join(lines)


def example_turns(tools: Iterable[Tool]) -> list[dict[str, str]]:
    """A worked example, as conversation turns (small models follow a shown pattern far better
    than a described one): a calc call when calc is offered, else the first tool's."""
    offered = {t.name: t for t in tools}
    if "calc" in offered:
        # The whole expression, parentheses included, goes into the call (a small model shown
        # "2 + 2" copies only the first two operands of "(48 + 14) * 8").
        question, call = "What is (2 + 3) * 4?", {"tool": "calc", "arguments": {"expression": "(2 + 3) * 4"}}
        result, answer = {"result": 20}, "(2 + 3) * 4 = 20"
    else:
        t = next(iter(offered.values()))
        question, call = f"Use {t.name}.", {"tool": t.name, "arguments": example_arguments(t.parameters or {})}
        result, answer = {"result": "..."}, f"Done with {t.name}."
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": json.dumps(call)},
        {"role": "user", "content": result_message(call["tool"], json.dumps(result))},
        {"role": "assistant", "content": json.dumps({"answer": answer})},
    ]


def result_message(tool: str, result: str) -> str:
    """How a tool's result is shown to the model (as the next user turn)."""
    return f"Result of {tool}: {result}"


def example_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    placeholders = {"string": "text", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    return {name: placeholders.get(_type_of(props[name]).split(" ")[0], "...") for name in required if name in props}


def _type_of(spec: Any) -> str:
    if not isinstance(spec, dict):
        return "any"
    if isinstance(spec.get("anyOf"), list):
        return " | ".join(_type_of(s) for s in spec["anyOf"] if s.get("type") != "null") or "any"
    if "enum" in spec:
        return " | ".join(json.dumps(v) for v in spec["enum"])
    kind = spec.get("type")
    if kind == "array":
        return f"list of {_type_of(spec.get('items', {}))}"
    return kind if isinstance(kind, str) else "any"


def _hoist_defs(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """A tool's schema placed under "arguments": its $defs move to the root (renamed with
    `prefix`, so two tools' definitions never collide) and its references follow them."""
    local = {**schema.get("definitions", {}), **schema.get("$defs", {})}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items() if node is not schema or k not in ("$defs", "definitions")}
            ref = node.get("$ref")
            if isinstance(ref, str):
                for base in ("#/$defs/", "#/definitions/"):
                    if ref.startswith(base):
                        out["$ref"] = "#/$defs/" + prefix + ref[len(base) :]
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for name, sub in local.items():
        defs[prefix + name] = rewrite(sub)
    return rewrite(schema)
