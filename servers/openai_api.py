"""The daemon's OpenAI-compatible API, so existing LLM clients can use llmos as a server.

    GET  /v1/models                  the served model
    GET  /v1/models/{id}
    POST /v1/chat/completions        streaming (server-sent events) or not
    GET  /health                     liveness, no token needed

Every /v1 request needs `Authorization: Bearer <daemon token>` (the OpenAI clients' api_key).
Each completion is a short-lived process: a session with only the `llm.chat` capability that
makes one syscall, scheduled with every agent under the same policy, and exits; it shows up
in `ps` while it runs. The routes are a FastAPI router (servers/http.py serves the app); the
protocol's bodies are pydantic models in servers/openai_models.py.

Tools (tool_choice, parallel_tool_calls, tool calls and tool messages in the conversation) and
response_format (json_object, json_schema) are translated by servers/openai_tools.py: decoding
is constrained, so tool calls and JSON replies always parse and match their schemas.

Differences from OpenAI: one choice (n=1), text content only, no logprobs, no legacy
`functions` (refused with 400, not ignored: the request model says so, and /openapi.json with
it); unknown harmless fields (user, presence_penalty, ...) are ignored; `temperature` defaults
to 1 and `max_tokens` to DEFAULT_MAX_TOKENS. vLLM's and SGLang's guided-decoding fields
(guided_json, guided_regex, guided_grammar, regex, ebnf) are accepted too.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import trio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from llmos.abi.errors import SyscallError
from llmos.abi.llm import ChatRequest
from llmos.kernel.kernel import Kernel, TableFull
from llmos.kernel.proc.capabilities import Capabilities
from llmos.servers.httperrors import ERROR_RESPONSES, HttpError, http_error
from llmos.servers.openai_models import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    CompletionRequest,
    CompletionUsage,
    Delta,
    Health,
    ModelCard,
    ModelList,
    PromptTokensDetails,
)
from llmos.servers.openai_tools import Refusal, Translation, translate
from llmos.syscalls.table import dispatch

DEFAULT_MAX_TOKENS = 1024
_LLM_CHAT_MAX_TOKENS = next(m.le for m in ChatRequest.model_fields["max_tokens"].metadata if getattr(m, "le", None))


def model_id(kernel: Kernel) -> str:
    return kernel.backend.model_id


def router(kernel: Kernel, authenticated: Any) -> APIRouter:
    """The OpenAI routes on `kernel`; `authenticated` is the dependency that checks the token."""
    api = APIRouter()
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticated)], responses=ERROR_RESPONSES, tags=["openai"])

    def card() -> ModelCard:
        return ModelCard(id=model_id(kernel), created=int(kernel.started), max_model_len=kernel.backend.max_context)

    @api.get("/health", response_model=Health, tags=["daemon"])
    async def health() -> Health:
        """Liveness; no token needed."""
        return Health(model=model_id(kernel))

    @v1.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        """The served model (one)."""
        return ModelList(data=[card()])

    @v1.get("/models/{model}", response_model=ModelCard)
    async def model(model: str) -> ModelCard:
        if model != model_id(kernel):
            raise HttpError(404, f"no such model: {model}", "model_not_found")
        return card()

    @v1.post(
        "/chat/completions",
        response_model=ChatCompletion,
        responses={200: {"content": {"text/event-stream": {"schema": {
            "type": "object", "description": "one server-sent event: a ChatCompletionChunk as JSON, then [DONE]",
            "properties": {"data": {"type": "string"}}, "required": ["data"]}}}}},
    )
    async def chat_completions(req: CompletionRequest, request: Request) -> Response:
        """A chat completion, run as a short-lived process; `stream: true` sends server-sent events."""
        _check(kernel, req)
        translation = _translate(req)
        args = _syscall_args(req, translation)
        try:
            proc = kernel.session("openai", Capabilities(allow=("llm.chat",)))
        except TableFull as exc:
            raise HttpError(429, str(exc), "process_table_full") from None
        completion_id = f"chatcmpl-{proc.pid}-{secrets.token_hex(6)}"
        if req.stream:
            return ChatStream(kernel, proc.pid, args, completion_id, req, translation)
        try:
            reply = await dispatch(kernel, proc.pid, "llm.chat", args)
        except SyscallError as err:
            raise http_error(err) from None
        finally:
            kernel.end_session(proc)
        decoder = translation.decoder()
        decoder.feed(reply.content)
        message, finish = decoder.message(reply.finish_reason)
        body = ChatCompletion(
            id=completion_id, created=int(time.time()), model=model_id(kernel),
            choices=[Choice(message=AssistantMessage.model_validate(message), finish_reason=finish)],
            usage=_usage(reply),
        )
        return JSONResponse(body.model_dump(mode="json"))

    api.include_router(v1)
    return api


class ChatStream(Response):
    """A streamed completion as an ASGI response: chunks are written as the model produces
    them, from inside the syscall's emit; a client that leaves cancels the syscall (and with
    it the sequence: Engine.release); the session ends however the response ends."""

    media_type = "text/event-stream"

    def __init__(
        self, kernel: Kernel, pid: int, args: dict[str, Any], cid: str, req: CompletionRequest, translation: Translation
    ) -> None:
        super().__init__(media_type=self.media_type, headers={"cache-control": "no-cache"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # sent chunked
        self.kernel, self.pid, self.args, self.req = kernel, pid, args, req
        self.decoder = translation.decoder()
        self.chunks = Chunks(cid, int(time.time()), model_id(kernel))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                await self._stream(send)
                nursery.cancel_scope.cancel()
        finally:
            self._end_session()

    def _end_session(self) -> None:
        proc = self.kernel.procs.get(self.pid)
        if proc is not None and proc.alive:
            self.kernel.end_session(proc)

    async def _stream(self, send: Any) -> None:
        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        async def emit(c: Any) -> None:
            for delta in self.decoder.feed(c.delta):  # text, or tool calls and their arguments
                plain = delta.keys() == {"content"}
                await body(self.chunks.text(delta["content"]) if plain else self.chunks.chunk(Delta.model_validate(delta)))

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await body(self.chunks.chunk(Delta(role="assistant", content="")))
        try:
            reply = await dispatch(self.kernel, self.pid, "llm.chat", self.args, emit)
        except SyscallError as err:
            self._end_session()
            await body(_event(http_error(err).body()))
        else:
            self._end_session()  # gone from the table before the client can read the end
            await body(self.chunks.chunk(Delta(), self.decoder.finish_reason(reply.finish_reason)))
            if self.req.stream_options is not None and self.req.stream_options.include_usage:
                await body(self.chunks.chunk(Delta(), usage=_usage(reply)))
        await body(b"data: [DONE]\n\n", more=False)


class Chunks:
    """The server-sent events of one streamed completion."""

    def __init__(self, cid: str, created: int, model: str) -> None:
        self.cid, self.created, self.model = cid, created, model
        # A chunk of plain text is the same JSON every token but for the text: rendered once
        # through the models with a marker and split around it (the models' validation and
        # dump per token were a fifth of the daemon thread's time per token at one agent).
        self._text = self.chunk(Delta(content=_MARKER)).split(json.dumps(_MARKER).encode())
        assert len(self._text) == 2

    def chunk(self, delta: Delta, finish: str | None = None, usage: CompletionUsage | None = None) -> bytes:
        choices = [] if usage is not None else [ChunkChoice(delta=delta, finish_reason=finish)]
        chunk = ChatCompletionChunk(id=self.cid, created=self.created, model=self.model, choices=choices, usage=usage)
        data = chunk.model_dump(mode="json", exclude={"usage"} if usage is None else None)
        for choice in data["choices"]:  # a delta says only what it carries
            choice["delta"] = _without_nulls(choice["delta"])
        return _event(data)

    def text(self, content: str) -> bytes:
        """The same bytes as chunk(Delta(content=content))."""
        return self._text[0] + json.dumps(content).encode() + self._text[1]


async def _cancel_on_disconnect(receive: Any, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


def _check(kernel: Kernel, req: CompletionRequest) -> None:
    if req.model != model_id(kernel):
        raise HttpError(404, f"model {req.model!r} is not served here; this daemon serves {model_id(kernel)!r}",
                        "model_not_found", "model")


def _translate(req: CompletionRequest) -> Translation:
    guided = {k: getattr(req, k) for k in ("guided_json", "guided_regex", "guided_grammar", "regex", "ebnf")}
    try:
        return translate(req.messages, req.tools, req.tool_choice, req.parallel_tool_calls, req.response_format, guided)
    except Refusal as exc:
        raise HttpError(400, exc.message, "unsupported" if "not supported" in exc.message else "invalid_request", exc.param) from None


def _syscall_args(req: CompletionRequest, translation: Translation) -> dict[str, Any]:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    if top_p == 0:  # a nucleus of nothing but the likeliest token (OpenAI accepts 0; llm.chat wants > 0)
        temperature, top_p = 0.0, 1.0
    return {
        "messages": translation.messages,
        "response_format": translation.response_format,
        # More than llm.chat takes could never be generated anyway (the context is shorter).
        "max_tokens": min(req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS, _LLM_CHAT_MAX_TOKENS),
        "temperature": temperature,
        "top_p": top_p,
        "seed": None if req.seed is None else req.seed % 2**63,  # the sampler's generator takes 64 bits
        "stop": stop,
        "stream": req.stream,
        "ignore_eos": req.ignore_eos,
    }


def _usage(reply: Any) -> CompletionUsage:
    u = reply.usage
    return CompletionUsage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens),
    )


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


_MARKER = "\x00text\x00"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"
