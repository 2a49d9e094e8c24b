"""The daemon's OpenAI-compatible HTTP API, so existing LLM clients can use llmos as a server.

    GET  /v1/models                  the served model
    GET  /v1/models/{id}
    POST /v1/chat/completions        streaming (server-sent events) or not
    GET  /health                     liveness, no token needed

Every /v1 request needs `Authorization: Bearer <daemon token>` (the OpenAI clients' api_key).
Each completion is a short-lived process: a session with only the `llm.chat` capability that
makes one syscall, scheduled with every agent under the same policy, and exits; it shows up
in `ps` while it runs. HTTP/1.1 is spoken with h11 on trio streams; keep-alive works, and a
streamed answer uses chunked transfer encoding.

Differences from OpenAI: one choice (n=1), text content only, no tools or logprobs (refused
with 400, not ignored); unknown harmless fields (user, presence_penalty, ...) are ignored;
`temperature` defaults to 1 and `max_tokens` to DEFAULT_MAX_TOKENS.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sys
import time
import traceback
from typing import Any, Literal

import h11
import trio
from pydantic import BaseModel, Field, ValidationError

from llmos.abi.errors import Errno, SyscallError
from llmos.kernel.kernel import Kernel, TableFull
from llmos.kernel.proc.capabilities import Capabilities
from llmos.syscalls.table import dispatch

MAX_BODY = 8 * 2**20
MAX_HEADERS = 64 * 2**10
REQUEST_TIMEOUT = 30.0  # to receive one whole request (a kept-alive connection idles this long)
DEFAULT_MAX_TOKENS = 1024
STATUS_OF = {Errno.EINVAL: 400, Errno.E2BIG: 400, Errno.EPERM: 403, Errno.ENOSYS: 404, Errno.EAGAIN: 429}


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# -- the request, as OpenAI clients send it -------------------------------------------------


class ContentPart(BaseModel):
    model_config = {"extra": "ignore"}
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = {"extra": "ignore"}
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = {"extra": "ignore"}
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = {"extra": "ignore"}
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    tools: list[Any] | None = None
    logprobs: bool | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens (benchmarks)


# -- serving ------------------------------------------------------------------------------


async def serve_http(
    kernel: Kernel, token: str, host: str, port: int, max_clients: int, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    api = OpenAIApi(kernel, token, max_clients)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(api.serve_connection, listeners)


class OpenAIApi:
    def __init__(self, kernel: Kernel, token: str, max_clients: int) -> None:
        self.kernel = kernel
        self.token = token
        self.max_clients = max_clients
        self.connections = 0

    @property
    def model_id(self) -> str:
        return self.kernel.backend.model_id

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        """One HTTP connection, possibly many requests. Nothing in it can end the daemon."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        self.connections += 1
        try:
            async with stream:
                if self.connections > self.max_clients:
                    await _respond(conn, stream, 503, HttpError(503, "too many connections; try later").body())
                    return
                while True:
                    request = await self._read_request(conn, stream)
                    if request is None:
                        return
                    await self._answer(conn, stream, *request)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            print(f"llmos http: request handler failed:\n{traceback.format_exc()}", file=sys.stderr)
        finally:
            self.connections -= 1

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        request = event
                        length = _header(event, b"content-length")
                        if length is not None and length.isdigit() and int(length) > MAX_BODY:
                            raise HttpError(413, f"request body over {MAX_BODY} bytes")
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_BODY:
                            raise HttpError(413, f"request body over {MAX_BODY} bytes")
                    elif isinstance(event, h11.EndOfMessage):
                        assert request is not None
                        return request, bytes(body)
                    elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        return None
        except trio.TooSlowError:
            if request is not None or body:
                await _respond(conn, stream, 408, HttpError(408, "request not received in time").body())
            return None
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _respond(conn, stream, exc.error_status_hint, HttpError(exc.error_status_hint, f"bad HTTP: {exc}").body())
            return None
        except HttpError as exc:
            await _respond(conn, stream, exc.status, exc.body())
            return None

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes) -> None:
        try:
            await self._route(conn, stream, request, body)
        except HttpError as exc:
            await _respond(conn, stream, exc.status, exc.body())

    async def _route(self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes) -> None:
        method, path = request.method.decode(), request.target.decode(errors="replace").split("?", 1)[0]
        if path == "/health":
            return await _respond(conn, stream, 200, {"status": "ok", "model": self.model_id})
        if not path.startswith("/v1/"):
            raise HttpError(404, f"no such endpoint: {path}")
        self._authenticate(request)
        if path == "/v1/models" and method == "GET":
            return await _respond(conn, stream, 200, {"object": "list", "data": [self._model_card()]})
        if path.startswith("/v1/models/") and method == "GET":
            if path[len("/v1/models/") :] != self.model_id:
                raise HttpError(404, f"no such model: {path[len('/v1/models/'):]}", "model_not_found")
            return await _respond(conn, stream, 200, self._model_card())
        if path == "/v1/chat/completions":
            if method != "POST":
                raise HttpError(405, f"{path} takes POST")
            return await self._chat(conn, stream, self._parse(body))
        raise HttpError(404, f"no such endpoint: {method} {path}")

    def _authenticate(self, request: h11.Request) -> None:
        given = _header(request, b"authorization") or ""
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.token.encode()):
            raise HttpError(401, "missing or wrong API key: use the daemon's token (daemon.token in its data directory)", "invalid_api_key")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": int(self.kernel.started), "owned_by": "llmos",
                "max_model_len": self.kernel.backend.max_context}

    def _parse(self, body: bytes) -> CompletionRequest:
        try:
            req = CompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"])
            raise HttpError(400, f"{param or 'body'}: {err['msg']}", "invalid_request", param or None) from None
        if req.model != self.model_id:
            raise HttpError(404, f"model {req.model!r} is not served here; this daemon serves {self.model_id!r}", "model_not_found", "model")
        if req.n != 1:
            raise HttpError(400, "only n=1 is supported", "unsupported", "n")
        if req.tools:
            raise HttpError(400, "tools are not supported by this endpoint", "unsupported", "tools")
        if req.logprobs:
            raise HttpError(400, "logprobs are not supported", "unsupported", "logprobs")
        return req

    # -- a completion: one short-lived process ------------------------------------------------

    async def _chat(self, conn: h11.Connection, stream: trio.SocketStream, req: CompletionRequest) -> None:
        args = _syscall_args(req)
        try:
            proc = self.kernel.session("openai", Capabilities(allow=("llm.chat",)))
        except TableFull as exc:
            raise HttpError(429, str(exc), "process_table_full") from None
        completion_id = f"chatcmpl-{proc.pid}-{secrets.token_hex(6)}"
        try:
            if req.stream:
                await self._chat_stream(conn, stream, req, proc.pid, args, completion_id)
            else:
                try:
                    reply = await dispatch(self.kernel, proc.pid, "llm.chat", args)
                except SyscallError as err:
                    raise _http_error(err) from None
                await _respond(conn, stream, 200, {
                    "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": self.model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                                 "finish_reason": _finish(reply.finish_reason), "logprobs": None}],
                    "usage": _usage(reply),
                })
        finally:
            self.kernel.end_session(proc)

    async def _chat_stream(
        self, conn: h11.Connection, stream: trio.SocketStream, req: CompletionRequest, pid: int, args: dict[str, Any], cid: str
    ) -> None:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        async def emit(c: Any) -> None:
            await _event(conn, stream, chunk({"content": c.delta}))

        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        await _event(conn, stream, chunk({"role": "assistant", "content": ""}))
        try:
            reply = await dispatch(self.kernel, pid, "llm.chat", args, emit)
        except SyscallError as err:
            if isinstance(err.__cause__, (trio.BrokenResourceError, trio.ClosedResourceError)):
                raise err.__cause__ from None  # the client left mid-stream
            await _event(conn, stream, _http_error(err).body())
        else:
            await _event(conn, stream, chunk({}, _finish(reply.finish_reason)))
            if req.stream_options is not None and req.stream_options.include_usage:
                await _event(conn, stream, {"id": cid, "object": "chat.completion.chunk", "created": created,
                                            "model": self.model_id, "choices": [], "usage": _usage(reply)})
        await stream.send_all(conn.send(h11.Data(data=b"data: [DONE]\n\n")))
        await stream.send_all(conn.send(h11.EndOfMessage()))


def _syscall_args(req: CompletionRequest) -> dict[str, Any]:
    messages = []
    for m in req.messages:
        if isinstance(m.content, list):
            if any(p.type != "text" for p in m.content):
                raise HttpError(400, "only text content parts are supported", "unsupported", "messages")
            text = "".join(p.text or "" for p in m.content)
        else:
            text = m.content or ""
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return {
        "messages": messages,
        "max_tokens": req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "seed": req.seed,
        "stop": stop,
        "stream": req.stream,
        "ignore_eos": req.ignore_eos,
    }


def _http_error(err: SyscallError) -> HttpError:
    param = err.details[0]["field"] if err.details else None
    code = "context_length_exceeded" if err.errno is Errno.E2BIG else err.errno.value
    return HttpError(STATUS_OF.get(err.errno, 500), err.message, code, param)


def _usage(reply: Any) -> dict[str, Any]:
    u = reply.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def _event(conn: h11.Connection, stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    await stream.send_all(conn.send(h11.Data(data=b"data: " + json.dumps(obj).encode() + b"\n\n")))


async def _respond(conn: h11.Connection, stream: trio.SocketStream, status: int, obj: dict[str, Any]) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return  # a response is already under way; the connection will be dropped
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status >= 400 and conn.their_state is not h11.DONE:
        headers.append((b"connection", b"close"))  # the rest of their request is not read
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))
