"""OpenAI chat completions <-> llmos, for what goes beyond plain text: `tools`, `tool_choice`,
`parallel_tool_calls`, `response_format`, and conversations with tool calls and tool results.
Independent of the HTTP framework: the server validates a request with these models, asks
`translate` for the llm.chat arguments, and turns the model's text into the response with a
`ReplyDecoder` (whole, or chunk by chunk while streaming).

With tools, the model replies in llmos's tool-call format (llmos.abi.toolcall): one JSON object,
a call `{"tool": NAME, "arguments": {...}}`, several `{"tool_calls": [...]}` (when
parallel_tool_calls), or the answer `{"answer": ...}`; decoding is constrained to exactly the
replies `tool_choice` allows, each call's arguments valid for that function's `parameters`.
The decoder turns that into `message.tool_calls` (arguments as a JSON string, ids `call_...`)
and `finish_reason: "tool_calls"`, or into `content`; streamed, into `delta.tool_calls` chunks
(the first for a call carries index, id, type and name; the rest carry pieces of arguments)
and `delta.content` chunks, as the official client accumulates them.

The conversation is rendered for a model without a tool-calling template: the tool list and
the reply format join the system message, a worked example follows it, an assistant message
with tool_calls becomes the JSON the model would have written, and a tool message becomes a
user message `Result of NAME: ...` (NAME from its tool_call_id). Unsupported requests are
refused (HttpRefusal -> 400), never ignored.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmos.abi.toolcall import example_turns, reply_schema, result_message, system_prompt

NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class Refusal(ValueError):
    """A request llmos cannot honour: 400, with the parameter it concerns."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


# -- the request's parts ----------------------------------------------------------------------


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=NAME)
    description: str = ""
    parameters: dict[str, Any] | None = None  # JSON schema; none: no arguments
    strict: bool | None = None  # the arguments always match: llmos constrains decoding either way


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = Field(description="only function tools are supported")
    function: FunctionDef


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(pattern=NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # the reply always matches: llmos constrains decoding either way


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


@dataclass
class OfferedTool:
    """A requested function as the tool-call protocol sees it."""

    name: str
    description: str
    parameters: dict[str, Any]


# -- translation ------------------------------------------------------------------------------


@dataclass
class Translation:
    messages: list[dict[str, str]]  # for llm.chat
    response_format: dict[str, Any] | None  # llm.chat's response_format
    tools: bool  # the reply is in the tool-call format (decode it)
    answer_is_json: bool = False  # with tools: the answer is a JSON value, not a string

    def decoder(self) -> "ReplyDecoder":
        return ReplyDecoder(self.tools, self.answer_is_json)


def translate(
    messages: list[Any],
    tools: list[ToolDef] | None = None,
    tool_choice: ToolChoice | None = None,
    parallel_tool_calls: bool | None = None,
    response_format: ResponseFormat | None = None,
    guided: dict[str, Any] | None = None,
) -> Translation:
    """The llm.chat arguments for a request. `messages` are the request's messages (objects with
    role, content, and tool_calls / tool_call_id where present; content already flattened to
    text); `guided` holds vLLM's and SGLang's constraint extensions (guided_json, guided_regex,
    guided_grammar, regex, ebnf) that were given."""
    reply = _reply_format(response_format, guided or {})
    if tool_choice is not None and not tools:
        raise Refusal("tool_choice needs tools", "tool_choice")
    offered = [OfferedTool(t.function.name, t.function.description, _parameters(i, t.function)) for i, t in enumerate(tools or [])]
    if len({t.name for t in offered}) != len(offered):
        raise Refusal("tools: two functions have the same name", "tools")
    choice = _choice(tool_choice, offered)
    # The format for several calls is described only when the client asked for them explicitly.
    rendered = render(messages, offered if choice != "none" else [], parallel=parallel_tool_calls is True)
    if not offered or choice == "none":
        return Translation(rendered, reply, tools=False)
    if reply is not None and reply["type"] not in ("json_object", "json_schema"):
        raise Refusal("with tools, a reply constraint can only be a JSON one (response_format)", "response_format")
    answer = None
    if reply is not None:
        answer = reply.get("json_schema") or {"type": "object"}
    parallel = parallel_tool_calls if parallel_tool_calls is not None else True
    try:
        schema = reply_schema(offered, choice, parallel=parallel, answer=answer)
    except ValueError as exc:
        raise Refusal(str(exc), "tool_choice") from None
    return Translation(rendered, {"type": "json_schema", "json_schema": schema}, tools=True, answer_is_json=answer is not None)


def _parameters(i: int, function: FunctionDef) -> dict[str, Any]:
    """A function's parameters: a valid JSON schema of an object (none: no arguments)."""
    import jsonschema

    schema = function.parameters
    if schema is None:
        return {"type": "object", "properties": {}}
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise Refusal(f"tools.{i}.function.parameters: invalid JSON schema at {where}: {exc.message}", f"tools.{i}") from None
    if schema.get("type", "object") != "object":
        raise Refusal(f"tools.{i}.function.parameters: must describe an object (the arguments), not {schema['type']!r}", f"tools.{i}")
    return schema


def _choice(tool_choice: ToolChoice | None, offered: list[OfferedTool]) -> str:
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, NamedToolChoice):
        if tool_choice.function.name not in {t.name for t in offered}:
            raise Refusal(f"tool_choice names {tool_choice.function.name!r}, which is not among the tools", "tool_choice")
        return tool_choice.function.name
    return tool_choice


def _reply_format(fmt: ResponseFormat | None, guided: dict[str, Any]) -> dict[str, Any] | None:
    """llm.chat's response_format for the request's response_format or guided-decoding fields."""
    given: list[dict[str, Any]] = []
    if fmt is not None and fmt.type == "json_object":
        given.append({"type": "json_object"})
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise Refusal("response_format of type json_schema needs json_schema", "response_format")
        schema = fmt.json_schema.schema_
        given.append({"type": "json_schema", "json_schema": schema} if schema is not None else {"type": "json_object"})
    if guided.get("guided_json") is not None:
        schema = guided["guided_json"]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                raise Refusal("guided_json is not JSON", "guided_json") from None
        if not isinstance(schema, dict):
            raise Refusal("guided_json must be a JSON schema (an object)", "guided_json")
        given.append({"type": "json_schema", "json_schema": schema})
    for names, kind, key in ((("guided_regex", "regex"), "regex", "pattern"), (("guided_grammar", "ebnf"), "grammar", "grammar")):
        values = {guided[n] for n in names if guided.get(n) is not None}
        if len(values) > 1:
            raise Refusal(f"{' and '.join(names)} differ", names[0])
        if values:
            value = values.pop()
            if not isinstance(value, str) or not value:
                raise Refusal(f"{names[0]} must be a non-empty string", names[0])
            given.append({"type": kind, key: value})
    if len(given) > 1:
        raise Refusal("give one reply constraint: response_format or one guided_* field", "response_format")
    return given[0] if given else None


def render(messages: list[Any], tools: list[OfferedTool], parallel: bool = True) -> list[dict[str, str]]:
    """The conversation as llm.chat messages (see the module's doc)."""
    out: list[dict[str, str]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, m in enumerate(messages):
        role, text = m.role, _text(m.content)
        if role in ("system", "developer"):
            out.append({"role": "system", "content": text})
        elif role == "user":
            out.append({"role": "user", "content": text})
        elif role == "assistant":
            calls = getattr(m, "tool_calls", None) or []
            if text or not calls:
                out.append({"role": "assistant", "content": json.dumps({"answer": text}) if tools else text})
            if calls:
                written = []
                for c in calls:
                    try:
                        arguments = json.loads(c.function.arguments or "{}")
                    except ValueError:
                        raise Refusal(f"messages.{i}.tool_calls: arguments of {c.id!r} are not JSON", f"messages.{i}") from None
                    names[c.id] = c.function.name
                    written.append({"tool": c.function.name, "arguments": arguments})
                reply = written[0] if len(written) == 1 else {"tool_calls": written}
                out.append({"role": "assistant", "content": json.dumps(reply)})
        elif role == "tool":
            call_id = getattr(m, "tool_call_id", None)
            if call_id is None or call_id not in names:
                raise Refusal(
                    f"messages.{i}: a tool message must answer a tool call of an earlier assistant message (tool_call_id)",
                    f"messages.{i}.tool_call_id",
                )
            out.append({"role": "user", "content": result_message(names[call_id], text)})
        else:
            raise Refusal(f"messages.{i}: unknown role {role!r}", f"messages.{i}.role")
    if tools:
        guide = system_prompt(tools, parallel=parallel)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + guide}
        else:
            out.insert(0, {"role": "system", "content": guide})
        out[1:1] = example_turns(tools)
    return out


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(p, "text", None) or "" for p in content)


# -- the reply --------------------------------------------------------------------------------


@dataclass
class _Call:
    id: str
    name: str = ""
    arguments: str = ""


@dataclass
class ReplyDecoder:
    """Turns the model's text into an OpenAI message: `feed` each piece as it is generated (it
    returns the `delta` objects to stream), then `message(finish_reason)`."""

    tools: bool
    answer_is_json: bool = False
    content: str = ""
    calls: list[_Call] = field(default_factory=list)
    _scan: "_Scanner | None" = None

    def __post_init__(self) -> None:
        if self.tools:
            self._scan = _Scanner(self)

    def feed(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        if self._scan is None:
            self.content += text
            return [{"content": text}]
        deltas: list[dict[str, Any]] = []
        self._scan.out = deltas
        for ch in text:
            self._scan.char(ch)
        return _merge(deltas)

    def message(self, finish_reason: str) -> tuple[dict[str, Any], str]:
        """The assistant message and the OpenAI finish_reason."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content if self.content or not self.calls else None}
        if self.calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in self.calls
            ]
        return message, self.finish_reason(finish_reason)

    def finish_reason(self, reason: str) -> str:
        if reason == "length":
            return "length"
        return "tool_calls" if self.calls else "stop"

    # events from the scanner

    def _content(self, text: str) -> None:
        self.content += text
        self._scan.out.append({"content": text})  # type: ignore[union-attr]

    def _call(self, index: int, name: str) -> None:
        call = _Call(id="call_" + secrets.token_hex(12), name=name)
        self.calls.append(call)
        self._scan.out.append(  # type: ignore[union-attr]
            {"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": {"name": name, "arguments": ""}}]}
        )

    def _arguments(self, index: int, text: str) -> None:
        if index >= len(self.calls):
            return
        self.calls[index].arguments += text
        self._scan.out.append({"tool_calls": [{"index": index, "function": {"arguments": text}}]})  # type: ignore[union-attr]


def _merge(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adjacent content pieces, or argument pieces of one call, as one delta."""
    out: list[dict[str, Any]] = []
    for d in deltas:
        last = out[-1] if out else None
        if last is not None and "content" in d and "content" in last:
            last["content"] += d["content"]
        elif (
            last is not None and "tool_calls" in d and "tool_calls" in last
            and set(d["tool_calls"][0]) == {"index", "function"} and set(last["tool_calls"][0]) == {"index", "function"}
            and d["tool_calls"][0]["index"] == last["tool_calls"][0]["index"]
        ):  # fmt: skip
            last["tool_calls"][0]["function"]["arguments"] += d["tool_calls"][0]["function"]["arguments"]
        else:
            out.append({k: (json.loads(json.dumps(v)) if k == "tool_calls" else v) for k, v in d.items()})
    return out


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = re.compile(r"^[0-9a-fA-F]{4}$")


class _Scanner:
    """An incremental JSON reader of a tool-call reply that knows where it is (the path of keys
    and indices), so that it can report, as the characters arrive: the answer's text (decoded
    from its JSON string, or raw when the answer is JSON), each call's name once it is complete,
    and each call's arguments as raw JSON text. It never validates: decoding was constrained."""

    def __init__(self, decoder: ReplyDecoder) -> None:
        self.d = decoder
        self.out: list[dict[str, Any]] = []
        self.stack: list[list[Any]] = []  # [kind "{" or "[", key or index, expecting a key]
        self.in_string = False
        self.string_is_key = False
        self.escape: str | None = None  # the escape read so far, after the backslash
        self.pending_surrogate: int | None = None
        self.buf = ""  # the current key or call name
        self.capture: tuple[str, int] | None = None  # ("arguments" | "answer", call index): raw
        self.capture_depth = 0
        self.scalar = False  # capturing a number or literal (it ends at a delimiter)
        self.string_target: tuple[str, int] | None = None  # ("answer" | "name", index) of the string

    def path(self) -> tuple[Any, ...]:
        return tuple(frame[1] for frame in self.stack)

    def interest(self) -> tuple[str, int] | None:
        p = self.path()
        if p == ("answer",):
            return ("answer", 0)
        if p == ("tool",):
            return ("name", 0)
        if p == ("arguments",):
            return ("arguments", 0)
        if len(p) == 3 and p[0] == "tool_calls" and isinstance(p[1], int):
            return {"tool": ("name", p[1]), "arguments": ("arguments", p[1])}.get(p[2])
        return None

    def raw(self, text: str) -> None:
        assert self.capture is not None
        kind, index = self.capture
        if kind == "arguments":
            self.d._arguments(index, text)
        else:
            self.d._content(text)

    def char(self, ch: str) -> None:
        if self.in_string:
            return self.string_char(ch)
        if self.scalar and ch in ",}] \n\t\r":
            self.scalar, self.capture = False, None  # the number or literal ended before ch
        frame = self.stack[-1] if self.stack else None
        if ch in " \n\t\r":
            pass
        elif ch in "{[":
            self.value_starts()
            if self.capture is not None:
                self.raw(ch)
            self.stack.append([ch, None if ch == "{" else 0, ch == "{"])
            return
        elif ch in "}]":
            if self.capture is not None:
                self.raw(ch)
            self.stack.pop()
            if self.capture is not None and len(self.stack) == self.capture_depth:
                self.capture = None
            return
        elif ch == ":":
            if frame is not None:
                frame[2] = False
        elif ch == ",":
            if frame is not None and frame[0] == "{":
                frame[2] = True
            elif frame is not None:
                frame[1] += 1
        elif ch == '"':
            is_key = frame is not None and frame[0] == "{" and frame[2]
            self.string_target = None
            if not is_key:
                self.value_starts(string=True)
            self.in_string, self.string_is_key, self.buf = True, is_key, ""
        elif not self.scalar:  # a number or literal starts
            self.value_starts()
            self.scalar = self.capture is not None and self.capture_depth == len(self.stack)
        if self.capture is not None:
            self.raw(ch)

    def value_starts(self, string: bool = False) -> None:
        """A value begins here: remember what to report about it."""
        if self.capture is not None:
            return
        target = self.interest()
        if target is None:
            return
        kind = target[0]
        if kind == "name" or (kind == "answer" and not self.d.answer_is_json):
            if string:
                self.string_target = target
            return
        self.capture, self.capture_depth = target, len(self.stack)

    def string_char(self, ch: str) -> None:
        if self.capture is not None:
            self.raw(ch)
        if self.escape is not None:
            self.escape += ch
            if self.escape[0] == "u":
                if len(self.escape) < 5:
                    return
                code = int(self.escape[1:], 16) if _HEX.match(self.escape[1:]) else 0xFFFD
                self.escape = None
                if 0xD800 <= code < 0xDC00:
                    self.pending_surrogate = code
                    return
                if 0xDC00 <= code < 0xE000 and self.pending_surrogate is not None:
                    code = 0x10000 + ((self.pending_surrogate - 0xD800) << 10) + (code - 0xDC00)
                self.pending_surrogate = None
                return self.string_text(chr(code))
            decoded = _ESCAPES.get(self.escape, self.escape)
            self.escape = None
            return self.string_text(decoded)
        if ch == "\\":
            self.escape = ""
            return
        if ch == '"':
            self.in_string = False
            if self.string_is_key:
                self.stack[-1][1] = self.buf
            elif self.string_target is not None and self.string_target[0] == "name":
                self.d._call(self.string_target[1], self.buf)
            if self.capture is not None and self.capture_depth == len(self.stack):
                self.capture = None  # a string value captured raw ends with its quote
            self.string_target = None
            return
        self.string_text(ch)

    def string_text(self, text: str) -> None:
        self.buf += text
        if self.string_target is not None and self.string_target[0] == "answer":
            self.d._content(text)
