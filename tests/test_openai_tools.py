"""The OpenAI <-> llmos translation of tools, tool_choice, response_format and tool messages
(servers/openai_tools.py), without a server: request parts in, llm.chat arguments out; model
text in, message / streamed deltas out, checked against what the official client builds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jsonschema
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessage

from llmos.abi.toolcall import reply_schema
from llmos.servers.openai_tools import (
    NamedToolChoice,
    Refusal,
    ResponseFormat,
    ToolCallIn,
    ToolDef,
    translate,
)

WEATHER = ToolDef.model_validate({
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "$defs": {"Unused": {"type": "integer"}},
        },
    },
})  # fmt: skip
CALC = ToolDef.model_validate({
    "type": "function",
    "function": {"name": "calc", "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}},
})  # fmt: skip


def msg(role, content=None, **extra):
    return SimpleNamespace(role=role, content=content, tool_calls=extra.get("tool_calls"), tool_call_id=extra.get("tool_call_id"))


def test_reply_schemas_allow_exactly_what_tool_choice_says():
    tools = [WEATHER.function, CALC.function]
    call = {"tool": "calc", "arguments": {"expression": "1 + 1"}}
    weather = {"tool": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}
    answer = {"answer": "hi"}
    many = {"tool_calls": [call, weather]}
    bad = [{"tool": "calc", "arguments": {}}, {"tool": "nope", "arguments": {}}, {"tool": "get_weather", "arguments": {"city": "x", "unit": "k"}}]

    def valid(schema, value):
        try:
            jsonschema.validate(value, schema)
            return True
        except jsonschema.ValidationError:
            return False

    auto = reply_schema(tools, "auto")
    assert valid(auto, call) and valid(auto, weather) and valid(auto, answer) and not valid(auto, many)
    assert not any(valid(auto, b) for b in bad)
    required = reply_schema(tools, "required", parallel=True)
    assert valid(required, call) and valid(required, many) and not valid(required, answer)
    named = reply_schema(tools, "get_weather")
    assert valid(named, weather) and not valid(named, call) and not valid(named, answer)
    assert valid(reply_schema(tools, "none"), answer) and not valid(reply_schema(tools, "none"), call)
    with_json = reply_schema(tools, "auto", answer={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert valid(with_json, {"answer": {"n": 3}}) and not valid(with_json, answer)


def test_translate_renders_the_conversation_and_constrains():
    messages = [
        msg("system", "Be brief."),
        msg("user", "Weather in Oslo?"),
        msg("assistant", None, tool_calls=[ToolCallIn.model_validate(
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}})]),
        msg("tool", '{"temp": 3}', tool_call_id="call_1"),
    ]  # fmt: skip
    t = translate(messages, [WEATHER, CALC], "auto", parallel_tool_calls=False)
    assert t.tools and t.response_format["type"] == "json_schema"
    roles = [m["role"] for m in t.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]  # worked example after the system
    assert t.messages[0]["content"].startswith("Be brief.\n\nYou can call tools.") and "- get_weather(city: string, unit" in t.messages[0]["content"]
    assert t.messages[-2] == {"role": "assistant", "content": '{"tool": "get_weather", "arguments": {"city": "Oslo"}}'}
    assert t.messages[-1] == {"role": "user", "content": 'Result of get_weather: {"temp": 3}'}
    schema = t.response_format["json_schema"]
    assert "$defs" in schema and "t0_Unused" in schema["$defs"]  # a tool's definitions move to the root
    plain = translate([msg("user", "hi")], response_format=ResponseFormat(type="json_object"))
    assert not plain.tools and plain.response_format == {"type": "json_object"} and plain.messages == [{"role": "user", "content": "hi"}]
    strict = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {"type": "object"}}})
    assert translate([msg("user", "hi")], response_format=strict).response_format == {"type": "json_schema", "json_schema": {"type": "object"}}
    assert translate([msg("user", "hi")], guided={"guided_regex": "a+", "regex": "a+"}).response_format == {"type": "regex", "pattern": "a+"}
    none = translate([msg("user", "hi")], [WEATHER], "none")
    assert not none.tools and none.response_format is None
    named = translate([msg("user", "hi")], [WEATHER, CALC], NamedToolChoice.model_validate({"type": "function", "function": {"name": "calc"}}))
    assert named.response_format["json_schema"]["properties"]["tool"] == {"const": "calc"}


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": [CALC], "tool_choice": NamedToolChoice.model_validate({"type": "function", "function": {"name": "x"}})}, "tool_choice"),
        ({"tools": [CALC, CALC]}, "tools"),
        ({"response_format": ResponseFormat(type="json_object"), "guided": {"guided_regex": "a"}}, "response_format"),
        ({"guided": {"guided_regex": "a", "regex": "b"}}, "guided_regex"),
        ({"tools": [CALC], "guided": {"guided_regex": "a"}}, "response_format"),
        ({"response_format": ResponseFormat(type="json_schema")}, "response_format"),
    ],
)
def test_refusals(kwargs, param):
    with pytest.raises(Refusal) as info:
        translate([msg("user", "hi")], **kwargs)
    assert info.value.param == param


def test_a_tool_message_must_answer_a_call():
    with pytest.raises(Refusal, match="must answer a tool call"):
        translate([msg("user", "hi"), msg("tool", "3", tool_call_id="call_9")], [CALC])


def stream(decoder, text, piece=3):
    deltas = []
    for i in range(0, len(text), piece):
        deltas += decoder.feed(text[i : i + piece])
    return deltas


def accumulate(deltas, finish):
    """What the official client's stream helper builds from the chunks."""
    from openai.lib.streaming.chat._completions import ChatCompletionStreamState

    state = ChatCompletionStreamState()
    chunks = [{"role": "assistant", "content": ""}, *deltas]
    for i, delta in enumerate(chunks):
        last = i == len(chunks) - 1
        state.handle_chunk(ChatCompletionChunk.model_validate({
            "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish if last else None}],
        }))  # fmt: skip
    return state.get_final_completion().choices[0].message


@pytest.mark.parametrize("piece", [1, 3, 50])
def test_decoder_builds_calls_and_answers_whole_and_streamed(piece):
    one = '{"tool": "get_weather", "arguments": {"city": "Oslo \\"Norway\\"", "unit": "c"}}'
    t = translate([msg("user", "hi")], [WEATHER, CALC])
    d = t.decoder()
    deltas = stream(d, one, piece)
    message, finish = d.message("stop")
    assert finish == "tool_calls" and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"city": 'Oslo "Norway"', "unit": "c"}
    ChatCompletionMessage.model_validate(message)
    assert deltas[0]["tool_calls"][0] == {"index": 0, "id": call["id"], "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    built = accumulate(deltas, "tool_calls")
    assert built.tool_calls[0].function.arguments == call["function"]["arguments"] and built.tool_calls[0].id == call["id"]

    many = '{"tool_calls": [{"tool": "calc", "arguments": {"expression": "1 + [2]"}}, {"tool": "get_weather", "arguments": {"city": "Rome"}}]}'
    d = t.decoder()
    built = accumulate(stream(d, many, piece), "tool_calls")
    assert [c.function.name for c in built.tool_calls] == ["calc", "get_weather"]
    assert [json.loads(c.function.arguments) for c in built.tool_calls] == [{"expression": "1 + [2]"}, {"city": "Rome"}]

    answer = '{"answer": "It is 3\\u00b0C in Oslo.\\nBring a coat \\ud83d\\ude00."}'
    d = t.decoder()
    deltas = stream(d, answer, piece)
    message, finish = d.message("stop")
    assert finish == "stop" and "tool_calls" not in message
    assert message["content"] == "It is 3°C in Oslo.\nBring a coat 😀." == "".join(x["content"] for x in deltas)
    assert accumulate(deltas, "stop").content == message["content"]

    json_answer = translate([msg("user", "hi")], [CALC], response_format=ResponseFormat(type="json_object")).decoder()
    stream(json_answer, '{"answer": {"n": [1, 2], "s": "x}"}}', piece)
    assert json_answer.message("stop")[0]["content"] == '{"n": [1, 2], "s": "x}"}'
    number = translate([msg("user", "hi")], [CALC], response_format=ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "number"}}})).decoder()  # fmt: skip
    stream(number, '{"answer": 42.5}', piece)
    assert number.message("stop")[0]["content"] == "42.5"


def test_a_cut_reply_keeps_what_it_has():
    d = translate([msg("user", "hi")], [CALC]).decoder()
    d.feed('{"answer": "The result is 4')
    message, finish = d.message("length")
    assert finish == "length" and message["content"] == "The result is 4"
    plain = translate([msg("user", "hi")]).decoder()
    assert plain.feed("hello") == [{"content": "hello"}] and plain.message("stop") == ({"role": "assistant", "content": "hello"}, "stop")


def test_a_streamed_text_chunk_is_what_the_models_render():
    """openai_api.Chunks.text splices the text into a chunk rendered once; it must give the
    bytes the models give, and a chunk the official client reads back."""
    from llmos.servers.openai_api import Chunks
    from llmos.servers.openai_models import Delta

    chunks = Chunks("chatcmpl-7-abc", 1700000000, "SmolLM2-135M-Instruct")
    for text in ("hi", "", ' "quoted" \\ back\nslash', "wörld 日本 🙂", "\u2028\x00", "\ufffd"):
        event = chunks.text(text)
        assert event == chunks.chunk(Delta(content=text))
        parsed = ChatCompletionChunk.model_validate(json.loads(event.removeprefix(b"data: ")))
        assert parsed.choices[0].delta.content == text
