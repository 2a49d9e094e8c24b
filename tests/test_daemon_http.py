"""The OpenAI-compatible API, tested with the official `openai` client on the real model; and
the remote model backend, tested by pointing one llmos kernel at another llmos daemon."""

from __future__ import annotations

import httpx
import openai
import pytest
import trio
from daemon_util import daemon_with

from llmos.abi.errors import Errno, SyscallError
from llmos.config import KernelConfig
from llmos.kernel.model.remote import RemoteModel, RemoteModelError
from llmos.runtime import boot, session

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(d, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{d.http_port}/v1", api_key=key or d.token, max_retries=0)


def test_openai_client_against_the_daemon(real_backend):
    async def main():
        async with daemon_with(real_backend, http=("127.0.0.1", 0)) as d:
            k = d.kernel
            want = await session(k, "ref").llm.chat(QUESTION, max_tokens=24)
            seen_in_ps: list[list[str]] = []

            def use_openai():
                c = client(d)
                models = c.models.list()
                plain = c.chat.completions.create(model=k.backend.name, messages=QUESTION, max_tokens=24, temperature=0)
                deltas, finish, usage = [], None, None
                stream = c.chat.completions.create(
                    model=k.backend.name, messages=QUESTION, max_tokens=24, temperature=0, stream=True,
                    stream_options={"include_usage": True},
                )
                for chunk in stream:
                    if chunk.choices:
                        deltas.append(chunk.choices[0].delta.content or "")
                        finish = chunk.choices[0].finish_reason or finish
                        if len(deltas) == 3:  # mid-stream: the request is a process in the table
                            seen_in_ps.append(trio.from_thread.run_sync(lambda: [p.name for p in k.procs]))
                    usage = chunk.usage or usage
                return models, plain, "".join(deltas), finish, usage

            result = await trio.to_thread.run_sync(use_openai)
            leftover = [p.name for p in k.procs]
            return want, result, seen_in_ps, leftover

    want, (models, plain, streamed, finish, usage), seen_in_ps, leftover = trio.run(main)
    assert [m.id for m in models.data] == [real_backend.name]
    assert plain.choices[0].message.content == want.content and "Paris" in want.content
    assert plain.choices[0].message.role == "assistant"
    assert plain.usage.prompt_tokens == want.usage.prompt_tokens
    assert plain.usage.completion_tokens == want.usage.completion_tokens
    assert streamed == want.content and finish == want.finish_reason
    assert usage.completion_tokens == want.usage.completion_tokens
    assert "openai" in seen_in_ps[0]  # scheduled as a short-lived process...
    assert "openai" not in leftover  # ...that is gone when the request is


def test_http_errors_and_disconnects(real_backend):
    async def main():
        async with daemon_with(real_backend, http=("127.0.0.1", 0)) as d:
            k, name = d.kernel, d.kernel.backend.name
            base = f"http://127.0.0.1:{d.http_port}"

            def use_http():
                errors = {}
                for label, call in {
                    "key": lambda: client(d, "wrong").models.list(),
                    "model": lambda: client(d).chat.completions.create(model="gpt-9", messages=QUESTION),
                    "temperature": lambda: client(d).chat.completions.create(model=name, messages=QUESTION, temperature=7),
                    "n": lambda: client(d).chat.completions.create(model=name, messages=QUESTION, n=2),
                    "empty": lambda: client(d).chat.completions.create(model=name, messages=[]),
                }.items():
                    with pytest.raises(openai.APIStatusError) as info:
                        call()
                    errors[label] = (info.value.status_code, info.value.body)
                auth = {"Authorization": f"Bearer {d.token}"}
                raw = {
                    "health": httpx.get(f"{base}/health").status_code,
                    "nowhere": httpx.get(f"{base}/v1/nowhere", headers=auth).status_code,
                    "not json": httpx.post(f"{base}/v1/chat/completions", content=b"{nope", headers=auth).status_code,
                    "too big": httpx.post(f"{base}/v1/chat/completions", content=b"x" * (9 * 2**20), headers=auth).status_code,
                    "garbage": _raw_exchange(d.http_port, b"NOT HTTP AT ALL\r\n\r\n"),
                }
                # A client that leaves mid-stream: its process and sequence go with it.
                body = {"model": name, "messages": QUESTION, "max_tokens": 2000, "stream": True}
                with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=auth) as resp:
                    for line in resp.iter_lines():
                        if '"content": "' in line and '"content": ""' not in line:
                            break
                ok = client(d).chat.completions.create(model=name, messages=QUESTION, max_tokens=4, temperature=0)
                return errors, raw, ok

            errors, raw, ok = await trio.to_thread.run_sync(use_http)
            with trio.fail_after(30):
                while len(k.scheduler) or any(p.name == "openai" for p in k.procs):
                    await trio.sleep(0.05)
            return errors, raw, ok

    errors, raw, ok = trio.run(main)
    assert errors["key"][0] == 401 and errors["key"][1]["code"] == "invalid_api_key"
    assert errors["model"][0] == 404 and "gpt-9" in errors["model"][1]["message"]
    assert errors["temperature"][0] == 400 and errors["temperature"][1]["param"] == "temperature"
    assert errors["n"][0] == 400 and errors["empty"][0] == 400
    assert raw == {"health": 200, "nowhere": 404, "not json": 400, "too big": 413, "garbage": 400}
    assert ok.choices[0].message.content


def _raw_exchange(port: int, data: bytes) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        head = s.recv(100).decode(errors="replace")
    return int(head.split()[1]) if head.startswith("HTTP/") else -1


def test_remote_model_backend_is_another_llmos(real_backend, monkeypatch):
    """Kernel B has no model of its own: its LLM is kernel A's daemon, over the OpenAI protocol,
    chosen by configuration as an operator would (LLMOS_MODEL=openai:..., key in the env)."""

    async def main():
        async with daemon_with(real_backend, http=("127.0.0.1", 0)) as a:
            local = session(a.kernel, "local")
            spec = f"openai:http://127.0.0.1:{a.http_port}/v1"
            monkeypatch.setenv("LLMOS_REMOTE_API_KEY", a.token)
            async with boot(KernelConfig(model=spec)) as b:
                remote = b.backend
                assert isinstance(remote, RemoteModel)
                sh = session(b, "shell")
                chunks: list[str] = []
                direct = await local.llm.chat(QUESTION, max_tokens=24)
                through = await sh.llm.chat(QUESTION, max_tokens=24, on_text=chunks.append)
                pid = await sh.proc.spawn("chat", "What is a CPU?")
                on_b = await sh.proc.wait(pid)
                stat = await sh.stat()
                return direct, through, chunks, on_b, stat, remote

    direct, through, chunks, on_b, stat, remote = trio.run(main)
    assert through.content == direct.content and "".join(chunks) == through.content
    assert through.usage.completion_tokens == direct.usage.completion_tokens
    assert through.usage.prompt_tokens == direct.usage.prompt_tokens
    assert on_b.exit_code == 0 and len(on_b.result) > 10  # a two-turn agent ran on kernel B
    assert stat.model == remote.name and stat.tokens_generated > 0 and remote.max_context == real_backend.max_context


def test_remote_model_failures_are_clean_errors(real_backend):
    async def main():
        with pytest.raises(RemoteModelError) as unreachable:
            await RemoteModel.open("openai:http://127.0.0.1:9/v1")
        async with daemon_with(real_backend, http=("127.0.0.1", 0)) as a:
            spec = f"openai:http://127.0.0.1:{a.http_port}/v1"
            with pytest.raises(RemoteModelError) as wrong_key:
                await RemoteModel.open(spec, "not-the-token")
            remote = await RemoteModel.open(spec, a.token)
        # A's daemon is gone now: B's calls fail with EIO, and B goes on.
        async with boot(KernelConfig(model=spec), backend=remote) as b:
            sh = session(b, "shell")
            with pytest.raises(SyscallError) as down:
                await sh.llm.chat(QUESTION, max_tokens=4)
            again = await sh.proc.getpid()
        return unreachable.value, wrong_key.value, down.value, again

    unreachable, wrong_key, down, again = trio.run(main)
    assert "unreachable" in str(unreachable)
    assert "401" in str(wrong_key)
    assert down.errno is Errno.EIO and "failed" in down.message and "127.0.0.1" in down.message
    assert again.name == "shell"
