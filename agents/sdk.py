"""The agent SDK: `Sys`, the handle an agent program gets to the syscall API.

    async def main(sys, args):
        reply = await sys.llm.chat("Say hello", on_text=print)
        await sys.log(reply.content)

Every method is a syscall through a Transport: the agent worker's channel to its kernel, a
daemon connection (agents/remote.py), or, for trusted code, a call straight into the syscall
table (llmos.runtime). The program cannot tell which, which is the point: the same agent runs
in all of them unchanged. The SDK imports only the ABI (llmos.abi), never the kernel.
"""

from __future__ import annotations

import inspect
import math
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

import trio
from pydantic import BaseModel

from llmos.abi.errors import Errno, SyscallError  # noqa: F401  (re-exported for agents)
from llmos.abi.llm import ChatChunk, ChatResponse, ResponseFormat
from llmos.abi.mem import MemChatResponse, MemStat, RecallHit
from llmos.abi.proc import PidResponse, ProcInfo, WaitResponse

Emit = Callable[[BaseModel], Awaitable[None]]
TextCallback = Callable[[str], Any]
Format = ResponseFormat | dict[str, Any] | type[BaseModel]


class Transport(Protocol):
    pid: int

    async def call(self, name: str, args: dict[str, Any], emit: Emit | None = None) -> BaseModel: ...


class Sys:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.llm = LLM(self)
        self.proc = Proc(self)
        self.fs = FS(self)
        self.mem = Mem(self)
        self.tools = Tools(self)
        self.kb = KB(self)
        self.ipc = IPC(self)
        self.mcp = MCP(self)

    @property
    def pid(self) -> int:
        return self.transport.pid

    async def call(self, syscall: str, emit: Emit | None = None, /, **args: Any) -> BaseModel:
        """Any syscall by name; raises SyscallError with an errno on failure."""
        return await self.transport.call(syscall, args, emit)

    async def sleep(self, seconds: float) -> None:
        await self.call("sleep", seconds=seconds)

    async def log(self, message: str, level: str = "info") -> None:
        await self.call("log", message=message, level=level)

    async def stat(self) -> Any:
        """Kernel figures (model, policy, tokens, steps, KV bytes): a KernelStat."""
        return await self.call("kernel.stat")

    async def read_log(self, pid: int, tail: int = 200) -> list[str]:
        return (await self.call("log.read", pid=pid, tail=tail)).lines  # type: ignore[attr-defined]

    async def follow_log(self, pid: int, on_event: Callable[[Any], Any]) -> None:
        """Call `on_event` with each LogEvent of process `pid` until it exits."""

        async def emit(chunk: BaseModel) -> None:
            out = on_event(chunk)
            if inspect.isawaitable(out):
                await out

        await self.call("log.follow", emit, pid=pid)


class LLM:
    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def chat(
        self,
        messages: str | list[dict[str, str]],
        *,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        on_text: TextCallback | None = None,
        ignore_eos: bool = False,
        response_format: Format | None = None,
    ) -> ChatResponse:
        """A completion. `messages` is a prompt string or a list of {role, content};
        `on_text` (sync or async) receives the text as it is generated. `response_format`
        constrains the reply: {"type": "json_object"}, {"type": "json_schema", "json_schema":
        {...}}, {"type": "regex", "pattern": ...}, {"type": "grammar", "grammar": ...}, or a
        pydantic model class (its JSON schema)."""
        args = dict(
            messages=_messages(messages, system),
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop or [],
            stream=on_text is not None,
            ignore_eos=ignore_eos,
            response_format=_format(response_format),
        )
        emit = None
        if on_text is not None:

            async def emit(chunk: BaseModel) -> None:
                assert isinstance(chunk, ChatChunk)
                out = on_text(chunk.delta)
                if inspect.isawaitable(out):
                    await out

        response = await self._sys.call("llm.chat", emit, **args)
        assert isinstance(response, ChatResponse)
        return response

    async def ask(self, prompt: str, **kwargs: Any) -> str:
        """The reply text for a single prompt."""
        return (await self.chat(prompt, **kwargs)).content

    @asynccontextmanager
    async def stream(self, messages: str | list[dict[str, str]], **kwargs: Any) -> AsyncIterator["TextStream"]:
        """`async with sys.llm.stream(prompt) as s: async for text in s: ...`; then s.response."""
        send, recv = trio.open_memory_channel[str](math.inf)
        stream = TextStream(recv)

        async def produce() -> None:
            async with send:
                stream.response = await self.chat(messages, on_text=send.send_nowait, **kwargs)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            yield stream


class TextStream:
    def __init__(self, recv: trio.MemoryReceiveChannel[str]) -> None:
        self._recv = recv
        self.response: ChatResponse | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._recv.__aiter__()


class Proc:
    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def spawn(
        self,
        program: str,
        *args: str,
        name: str | None = None,
        nice: int | None = None,
        allow: list[str] | None = None,
        root: str | None = None,
        quota: dict[str, float | int] | None = None,
    ) -> int:
        """Start a child process running `program`; returns its pid. `allow` (syscall patterns),
        `root` (a folder inside the caller's) and `quota` (max_tokens, max_wall_time,
        max_syscalls, max_memory_pages) narrow what the child may do."""
        r = await self._sys.call(
            "proc.spawn", program=program, args=list(args), name=name, nice=nice, allow=allow, root=root, quota=quota
        )
        return r.pid  # type: ignore[attr-defined]

    async def wait(self, pid: int | None = None, timeout: float | None = None) -> WaitResponse:
        r = await self._sys.call("proc.wait", pid=pid, timeout=timeout)
        assert isinstance(r, WaitResponse)
        return r

    async def kill(self, pid: int) -> None:
        await self._sys.call("proc.kill", pid=pid)

    async def exit(self, code: int = 0, result: Any = None) -> None:
        await self._sys.call("proc.exit", code=code, result=result)

    async def getpid(self) -> PidResponse:
        r = await self._sys.call("proc.getpid")
        assert isinstance(r, PidResponse)
        return r

    async def ps(self) -> list[ProcInfo]:
        return (await self._sys.call("proc.ps")).procs  # type: ignore[attr-defined]

    async def nice(self, value: int, pid: int | None = None) -> int:
        return (await self._sys.call("proc.nice", pid=pid, nice=value)).nice  # type: ignore[attr-defined]

    async def signal(self, pid: int, signal: str) -> None:
        """"stop", "cont", "term" or "kill"."""
        await self._sys.call("proc.signal", pid=pid, signal=signal)

    async def limits(self) -> Any:
        """The caller's quota, its use so far and what is left (a Limits)."""
        return await self._sys.call("proc.limits")


class FS:
    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def read(self, path: str) -> str:
        return (await self._sys.call("fs.read", path=path)).content  # type: ignore[attr-defined]

    async def write(self, path: str, content: str, append: bool = False) -> int:
        r = await self._sys.call("fs.write", path=path, content=content, append=append)
        return r.bytes_written  # type: ignore[attr-defined]

    async def list(self, path: str = ".") -> list[Any]:
        return (await self._sys.call("fs.list", path=path)).entries  # type: ignore[attr-defined]


class Tools:
    """Tools are syscalls: list them with their schemas, call one, or let the model use them."""

    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def list(self, *names: str) -> list[Any]:
        """ToolInfo (name, description, JSON schema of the arguments) for each syscall the
        caller may use, narrowed to name patterns if given."""
        r = await self._sys.call("tools.list", names=list(names) or None)
        return r.tools  # type: ignore[attr-defined]

    async def call(self, name: str, **args: Any) -> BaseModel:
        return await self._sys.call(name, **args)

    async def run(self, task: str, tools: list[str], **options: Any) -> Any:
        """Let the model work on `task` with `tools` (names or patterns): it sees their schemas,
        calls them in JSON, gets the results back. Returns a ToolRun (agents/tooluse.py)."""
        from llmos.agents.tooluse import run_tools

        return await run_tools(self._sys, task, tools, **options)


class KB:
    """The knowledge base: documents chunked, embedded and searched by meaning."""

    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def ingest(
        self, *paths: str, texts: list[dict[str, str]] | None = None, collection: str = "default"
    ) -> Any:
        """Add files/folders (inside the caller's root) and {source, text} documents."""
        return await self._sys.call("kb.ingest", paths=list(paths), texts=texts or [], collection=collection)

    async def search(self, query: str, k: int = 5, collection: str = "default", min_score: float | None = None) -> list[Any]:
        """The best matching chunks (text, source, heading, score), best first."""
        r = await self._sys.call("kb.search", query=query, k=k, collection=collection, min_score=min_score)
        return r.hits  # type: ignore[attr-defined]

    async def list(self) -> dict[str, int]:
        return (await self._sys.call("kb.list")).collections  # type: ignore[attr-defined]

    async def drop(self, collection: str) -> bool:
        return (await self._sys.call("kb.drop", collection=collection)).result  # type: ignore[attr-defined]


class IPC:
    """Mailboxes: messages (JSON values) between processes."""

    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def send(self, pid: int, body: Any, tag: str | None = None) -> None:
        await self._sys.call("ipc.send", pid=pid, body=body, tag=tag)

    async def recv(self, from_pid: int | None = None, tag: str | None = None, timeout: float | None = None) -> Any:
        """The oldest matching message (sender, tag, body); blocks until one arrives."""
        return await self._sys.call("ipc.recv", from_pid=from_pid, tag=tag, timeout=timeout)


class MCP:
    """Model Context Protocol servers, their tools mounted as syscalls `<prefix>.<tool>`."""

    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def mount(
        self,
        prefix: str,
        command: str,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        call_timeout: float | None = None,
    ) -> list[str]:
        """Start a stdio MCP server; returns the syscall names of its tools. `timeout` bounds its
        start and each tool call, unless `call_timeout` is given for the calls."""
        r = await self._sys.call(
            "mcp.mount", prefix=prefix, command=command, args=list(args), env=env or {}, timeout=timeout,
            call_timeout=call_timeout,
        )  # fmt: skip
        return r.tools  # type: ignore[attr-defined]

    async def unmount(self, prefix: str) -> None:
        await self._sys.call("mcp.unmount", prefix=prefix)

    async def list(self) -> list[Any]:
        return (await self._sys.call("mcp.list")).mounts  # type: ignore[attr-defined]


class Mem:
    """The process's paged memory. `chat` is `llm.chat` that remembers: send only the new
    turn; the kernel keeps the conversation and pages back in what the turn needs."""

    def __init__(self, sys: Sys) -> None:
        self._sys = sys

    async def chat(
        self,
        messages: str | list[dict[str, str]],
        *,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        on_text: TextCallback | None = None,
        remember: bool = True,
        response_format: Format | None = None,
    ) -> MemChatResponse:
        """`remember=False` asks without keeping the turn or the reply; `response_format` as
        for llm.chat."""
        args = dict(
            messages=_messages(messages, system),
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop or [],
            stream=on_text is not None,
            remember=remember,
            response_format=_format(response_format),
        )
        response = await self._sys.call("mem.chat", _text_emit(on_text), **args)
        assert isinstance(response, MemChatResponse)
        return response

    async def store(self, text: str, *, role: str = "user", pin: bool = False) -> list[int]:
        """Remember a message; returns its page numbers."""
        return (await self._sys.call("mem.store", text=text, role=role, pin=pin)).pages  # type: ignore[attr-defined]

    async def recall(self, query: str, k: int = 4, page_in: bool = True) -> list[RecallHit]:
        return (await self._sys.call("mem.recall", query=query, k=k, page_in=page_in)).hits  # type: ignore[attr-defined]

    async def pin(self, *pages: int) -> None:
        await self._sys.call("mem.pin", pages=list(pages))

    async def unpin(self, *pages: int) -> None:
        await self._sys.call("mem.unpin", pages=list(pages))

    async def stat(self, pid: int | None = None, pages: bool = True) -> MemStat:
        r = await self._sys.call("mem.stat", pid=pid, pages=pages)
        assert isinstance(r, MemStat)
        return r

    async def attach(self, name: str) -> int:
        """Use the named, persistent memory `name`; returns how many pages it already has."""
        return (await self._sys.call("mem.attach", name=name)).pages  # type: ignore[attr-defined]

    async def budget(self, tokens: int) -> None:
        await self._sys.call("mem.budget", tokens=tokens)

    async def sync(self) -> int:
        return (await self._sys.call("mem.sync")).written  # type: ignore[attr-defined]


def _text_emit(on_text: TextCallback | None) -> Emit | None:
    if on_text is None:
        return None

    async def emit(chunk: BaseModel) -> None:
        assert isinstance(chunk, ChatChunk)
        out = on_text(chunk.delta)
        if inspect.isawaitable(out):
            await out

    return emit


def _format(fmt: Format | None) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if isinstance(fmt, type) and issubclass(fmt, BaseModel):
        return {"type": "json_schema", "json_schema": fmt.model_json_schema()}
    if isinstance(fmt, BaseModel):
        return fmt.model_dump(exclude_none=True)
    return dict(fmt)


def _messages(messages: str | list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
    if system is not None:
        msgs = [{"role": "system", "content": system}, *msgs]
    return msgs
