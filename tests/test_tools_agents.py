"""The tool-calling loop (agents/tooluse.py) and the planner example, on real syscalls and the
real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from conftest import kernel_with

from llmos.abi.proc import EXIT_QUOTA
from llmos.abi.tools import ToolInfo
from llmos.agents.tooluse import Answer, Malformed, ToolCall, parse_reply
from llmos.kernel.proc.capabilities import Capabilities
from llmos.kernel.state.audit import AuditLog
from llmos.runtime import local_handle, session
from llmos.syscalls import TABLE
from llmos.syscalls.calc import calc

HERE = Path(__file__).parent / "agents_for_tests"
OFFERED = {
    name: ToolInfo(name=name, description=TABLE[name].doc, parameters=TABLE[name].arguments_schema(), streaming=False)
    for name in ("calc", "time.now")
}


def run(backend, fn):
    async def main():
        async with kernel_with(backend) as kernel:
            return await fn(kernel, session(kernel, "test"))

    return trio.run(main)


def scripted(*replies: str):
    """A scripted 'model' for exercising the loop's bookkeeping exactly; the real model is used below."""
    queue = list(replies)
    seen: list[list[dict]] = []

    async def chat(messages, max_tokens, **sampling):
        seen.append(messages)
        return queue.pop(0)

    chat.seen = seen
    return chat


def test_parse_reply():
    assert parse_reply('{"tool": "calc", "arguments": {"expression": "1+1"}}', OFFERED) == ToolCall("calc", {"expression": "1+1"})
    fenced = 'Sure!\n```json\n{"tool": "time.now"}\n```\nDone.'
    assert parse_reply(fenced, OFFERED) == ToolCall("time.now", {})
    assert parse_reply('{"answer": "391"}', OFFERED) == Answer("391")
    assert parse_reply('{"answer": 391}', OFFERED) == Answer("391")
    assert parse_reply('x {bad} {"answer": "ok"}', OFFERED) == Answer("ok")  # the first *valid* object
    for reply, hint in [
        ("The answer is 391.", "no JSON object"),
        ('{"tool": "calc", "arguments": {...}}', "not valid JSON"),
        ('{"tool": "math", "arguments": {}}', "no tool named 'math'"),
        ('{"tool": "calc", "arguments": "1+1"}', "must be a JSON object"),
        ('{"name": "calc"}', 'needs "tool"'),
        ("[1, 2]", "no JSON object"),
    ]:
        with pytest.raises(Malformed, match=hint):
            parse_reply(reply, OFFERED)


def test_loop_corrects_runs_and_bounds(tiny_backend, tmp_path):
    async def body(kernel, sh):
        box = local_handle(kernel, kernel.session("box", Capabilities(allow=("calc", "fs.read", "tools.list"), fs_root=tmp_path)))
        good = scripted(
            "Let me think... 17 times 23.",
            '{"tool": "calc", "arguments": {"expression": 17}}',
            '```json\n{"tool": "calc", "arguments": {"expression": "17 * 23"}}\n```',
            '{"tool": "fs.read", "arguments": {"path": "missing.txt"}}',
            '{"answer": "17 * 23 = 391"}',
        )
        ok = await box.tools.run("What is 17 * 23?", ["calc", "fs.read"], chat=good)
        stubborn = scripted(*["I refuse to use JSON."] * 3)
        malformed = await box.tools.run("What is 2 + 2?", ["calc"], max_retries=2, chat=stubborn)
        busy = scripted(*['{"tool": "calc", "arguments": {"expression": "1 + 1"}}'] * 4)
        capped = await box.tools.run("Add forever", ["calc"], max_steps=3, chat=busy)
        return ok, good.seen, malformed, capped

    ok, seen, malformed, capped = run(tiny_backend, body)
    assert ok.stopped == "answer" and ok.answer == "17 * 23 = 391"
    assert [(s.tool, s.result, s.error) for s in ok.steps] == [
        ("calc", {"result": 391}, None),
        ("fs.read", None, "[ENOENT] no such file: missing.txt"),  # a failed call is a result, not a retry
    ]
    assert len(ok.corrections) == 2 and "no JSON object" in ok.corrections[0] and "expression" in ok.corrections[1]
    last_prompt = seen[-1]
    assert last_prompt[0]["role"] == "system" and "- calc(expression: string)" in last_prompt[0]["content"]
    assert {"role": "user", "content": 'Result of calc: {"result": 391}'} in last_prompt
    assert any(m["content"].startswith("fs.read failed: [ENOENT]") for m in last_prompt)
    assert malformed.stopped == "malformed" and malformed.answer is None and len(malformed.corrections) == 3
    assert capped.stopped == "max_steps" and len(capped.steps) == 3


def test_a_process_looping_on_tool_calls_is_stopped_by_its_quota(tiny_backend):
    async def body(kernel, sh):
        pid = await sh.proc.spawn(str(HERE / "tool_looper.py"), quota={"max_syscalls": 30})
        return await sh.proc.wait(pid)

    status = run(tiny_backend, body)
    assert status.exit_code == EXIT_QUOTA and status.reason == "quota exceeded: max_syscalls 30"


def test_loop_on_the_real_model(real_backend, tmp_path):
    audit = tmp_path / "audit.jsonl"

    async def body(kernel, sh):
        kernel.audit = AuditLog(audit)
        return await sh.tools.run("What is 17 * 23?", ["calc"], tool_choice="required", max_steps=2, max_retries=1, max_tokens=48)

    result = run(real_backend, body)
    assert result.stopped in ("answer", "malformed", "max_steps")
    # constrained and required: the first reply is a valid call, with the question's expression
    assert result.steps and result.steps[0].tool == "calc" and result.steps[0].result == {"result": 391}
    conversation = result.messages[6:]  # after the system prompt, the worked example and the task
    replies = [m for m in conversation if m["role"] == "assistant"]
    assert 1 <= len(replies) <= (2 + 1) * (1 + 1)
    for correction in result.corrections:  # every malformed reply was answered with its correction
        assert {"role": "user", "content": correction} in conversation
    for step in result.steps:  # every call the model made ran as a real syscall
        assert step.tool == "calc"
        if step.error is None:
            assert step.result == {"result": calc(step.arguments["expression"])}
    calls = [json.loads(line) for line in audit.read_text().splitlines()]
    assert sum(1 for c in calls if c["syscall"] == "calc") == len(result.steps)
    assert sum(1 for c in calls if c["syscall"] == "llm.chat") == len(replies)


def test_planner_splits_spawns_gathers_and_reports(real_backend, tmp_path):
    async def body(kernel, sh):
        box = local_handle(kernel, kernel.session("box", Capabilities(fs_root=tmp_path)))
        pid = await box.proc.spawn("planner", "--report", "trip.md", "Plan a picnic: food, drinks and games")
        workers = {}
        while not (status := kernel.procs.get(pid)) or status.alive:
            for p in kernel.procs:
                if p.ppid == pid and p.pid not in workers:
                    workers[p.pid] = kernel.caps[p.pid]
            await trio.sleep(0.05)
        return await box.proc.wait(pid), workers

    status, workers = run(real_backend, body)
    assert status.exit_code == 0, status.reason
    result = status.result
    assert 2 <= len(result["subtasks"]) <= 4 and result["failed"] == []
    assert len(workers) == len(result["subtasks"])
    for caps in workers.values():  # narrower than the planner's
        assert caps.allows("llm.chat") and caps.allows("ipc.send")
        assert not caps.allows("fs.write") and not caps.allows("proc.spawn")
        assert caps.quota.max_tokens == 1500
    report = (tmp_path / "trip.md").read_text()
    assert report.startswith("# Report: Plan a picnic")
    for i, subtask in enumerate(result["subtasks"], 1):
        assert f"## {i}. {subtask}" in report
    assert report.count("*worker pid") == len(result["subtasks"])
