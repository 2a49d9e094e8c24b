"""Tools and structured output over the OpenAI-compatible HTTP API, with the official `openai`
client on the real model: a tool-call round trip (call, tool message, answer) whole and
streamed, json_schema strict (the client's own `parse`), json_object, refusals; and a kernel
whose model is that daemon (the remote backend) passing its constraints through."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
import trio
from daemon_util import daemon_with
from pydantic import BaseModel

from llmos.config import KernelConfig
from llmos.runtime import boot, session

CALC = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": 'e.g. "(3 + 4) * 12"'}},
            "required": ["expression"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
QUESTION = [{"role": "user", "content": "What is 37 * 43? Use the calculator."}]


class Capital(BaseModel):
    country: str
    city: str


def client(d) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{d.http_port}/v1", api_key=d.token, max_retries=0, timeout=600)


def streamed(stream) -> tuple[str, list[dict], str | None]:
    """Content, tool calls and finish reason, accumulated from chunks as a client does."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    call["id"], call["name"] = tc.id, tc.function.name
                call["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def test_tool_call_round_trip_whole_and_streamed(real_backend):
    async def main():
        async with daemon_with(real_backend, http=("127.0.0.1", 0)) as d:
            name = d.kernel.backend.name

            def use():
                c = client(d)
                first = c.chat.completions.create(model=name, messages=QUESTION, tools=[CALC],
                                                  tool_choice="required", temperature=0, max_tokens=64)  # fmt: skip
                s_content, s_calls, s_finish = streamed(c.chat.completions.create(
                    model=name, messages=QUESTION, tools=[CALC], tool_choice="required", temperature=0,
                    max_tokens=64, stream=True))  # fmt: skip
                call = first.choices[0].message.tool_calls[0]
                result = str(eval(json.loads(call.function.arguments)["expression"], {}))  # a test's own calculator
                conversation = [*QUESTION, first.choices[0].message.model_dump(exclude_none=True),
                                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"result": result})}]  # fmt: skip
                answer = c.chat.completions.create(model=name, messages=conversation, tools=[CALC],
                                                   temperature=0, max_tokens=64)  # fmt: skip
                a_content, a_calls, a_finish = streamed(c.chat.completions.create(
                    model=name, messages=conversation, tools=[CALC], temperature=0, max_tokens=64, stream=True))
                with c.chat.completions.stream(model=name, messages=QUESTION, tools=[CALC], tool_choice="required",
                                               temperature=0, max_tokens=64) as helper:  # fmt: skip
                    helped = helper.get_final_completion()
                return first, (s_content, s_calls, s_finish), result, answer, (a_content, a_calls, a_finish), helped

            return await trio.to_thread.run_sync(use)

    first, (s_content, s_calls, s_finish), result, answer, (a_content, a_calls, a_finish), helped = trio.run(main)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "calc"
    jsonschema.validate(json.loads(call.function.arguments), CALC["function"]["parameters"])
    assert json.loads(call.function.arguments)["expression"].replace(" ", "") == "37*43" and result == "1591"
    # streamed: the same call, in delta.tool_calls chunks
    assert s_finish == "tool_calls" and s_content == ""
    assert [(c["name"], c["arguments"]) for c in s_calls] == [("calc", call.function.arguments)] and s_calls[0]["id"].startswith("call_")
    # after the tool message, an answer (whole and streamed alike)
    reply = answer.choices[0]
    assert reply.finish_reason == "stop" and not reply.message.tool_calls and "1591" in reply.message.content
    assert (a_content, a_calls, a_finish) == (reply.message.content, [], "stop")
    # the client's own stream helper builds the same call
    assert helped.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    assert helped.choices[0].message.tool_calls[0].function.parsed_arguments == json.loads(call.function.arguments)


def test_json_schema_strict_json_object_and_refusals(real_backend):
    async def main():
        async with daemon_with(real_backend, http=("127.0.0.1", 0)) as d:
            name = d.kernel.backend.name
            url = f"http://127.0.0.1:{d.http_port}/v1/chat/completions"
            headers = {"Authorization": f"Bearer {d.token}"}
            ask = [{"role": "user", "content": "What is the capital of France? Reply in JSON."}]

            def use():
                c = client(d)
                parsed = c.chat.completions.parse(model=name, messages=ask, response_format=Capital, temperature=0, max_tokens=48)
                obj = c.chat.completions.create(model=name, messages=ask, response_format={"type": "json_object"},
                                                temperature=0, max_tokens=48)  # fmt: skip
                tool = c.chat.completions.parse(model=name, messages=QUESTION, tools=[openai.pydantic_function_tool(Capital)],
                                                tool_choice="required", temperature=0, max_tokens=48)  # fmt: skip
                refusals = {}
                for label, extra in {
                    "custom tool": {"tools": [{"type": "custom", "custom": {"name": "x"}}]},
                    "functions": {"functions": [{"name": "f", "parameters": {}}]},
                    "function_call": {"function_call": "auto"},
                    "choice without tools": {"tool_choice": "required"},
                    "unknown choice": {"tools": [CALC], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                    "format type": {"response_format": {"type": "xml"}},
                    "bad schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
                    "bad parameters": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
                    "orphan tool message": {"messages": [*ask, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
                    "two constraints": {"response_format": {"type": "json_object"}, "guided_regex": "a+"},
                    "bad regex": {"guided_regex": "a(b"},
                }.items():
                    body = {"model": name, "messages": ask, "max_tokens": 4, **extra}
                    r = httpx.post(url, json=body, headers=headers, timeout=60)
                    refusals[label] = (r.status_code, r.json()["error"])
                return parsed, obj, tool, refusals

            return await trio.to_thread.run_sync(use)

    parsed, obj, tool, refusals = trio.run(main)
    capital = parsed.choices[0].message.parsed
    assert isinstance(capital, Capital) and "paris" in capital.city.lower()
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    assert isinstance(tool.choices[0].message.tool_calls[0].function.parsed_arguments, Capital)
    for label, (status, error) in refusals.items():
        assert status == 400, (label, status, error)
        assert error["type"] == "invalid_request_error" and error["message"], label
    assert "strin" in refusals["bad schema"][1]["message"] and "unclosed group" in refusals["bad regex"][1]["message"]
    assert refusals["bad parameters"][1]["param"] == "tools.0"


@pytest.mark.slow
def test_remote_backend_passes_constraints_through(real_backend, monkeypatch):
    """Kernel B's model is A's daemon: B's constrained llm.chat becomes response_format /
    guided_regex on the wire, and A constrains the decoding."""
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}

    async def main():
        async with daemon_with(real_backend, http=("127.0.0.1", 0)) as a:
            monkeypatch.setenv("LLMOS_REMOTE_API_KEY", a.token)
            async with boot(KernelConfig(model=f"openai:http://127.0.0.1:{a.http_port}/v1")) as b:
                sh = session(b, "shell")
                shaped = await sh.llm.chat("Is Paris in France?", max_tokens=24,
                                           response_format={"type": "json_schema", "json_schema": schema})  # fmt: skip
                phone = await sh.llm.chat("A phone number, please.", max_tokens=24,
                                          response_format={"type": "regex", "pattern": r"\d{3}-\d{4}"})  # fmt: skip
                try:
                    await sh.llm.chat("x", response_format={"type": "json_schema", "json_schema": {"type": 7}})
                except Exception as exc:
                    bad = exc
                return shaped, phone, bad

    shaped, phone, bad = trio.run(main)
    assert json.loads(shaped.content) == {"answer": "yes"}
    assert len(phone.content) == 8 and phone.content[3] == "-" and phone.content.replace("-", "").isdigit()
    assert getattr(bad, "errno", None) is not None and bad.errno.value == "EINVAL"
