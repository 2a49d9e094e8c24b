"""The daemon's HTTP door: one FastAPI app served by hypercorn inside the daemon's trio loop.

    /v1/...        OpenAI-compatible API (servers/openai_api.py)
    /metrics       Prometheus exposition (servers/metrics.py)
    /, /api/...    the web console and its syscall endpoint (servers/console.py)
    /openapi.json  the API's OpenAPI document (FastAPI builds it from the pydantic models)
    /health        liveness

Why not hypercorn.trio.serve: it accepts connections itself and offers no hook to refuse or
shed one, and this door must never let connections that have not authenticated crowd out
those that have. So the accept loop is ours (`ConnectionGate`) and each admitted connection is
handed to hypercorn's trio TCPServer, which speaks HTTP/1.1 (h11) and runs the ASGI app:

  - at most `max_clients` connections; when full, a newcomer takes the place of the oldest
    connection that has not authenticated yet; only when every connection has authenticated is
    it refused with 503
  - a connection must make an authenticated request within AUTH_DEADLINE of opening, or it is
    closed (the console's page and /health need no token, and take well under that)
  - failed logins are written to the audit log and rate-limited per client address
    (`AuthGuard`); request bodies are limited to MAX_BODY (413)

Every error is a JSON body in OpenAI's shape (servers/httperrors.py).
"""

from __future__ import annotations

import hmac
import json
import math
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos.kernel.kernel import Kernel
from llmos.servers.httperrors import HttpError

MAX_BODY = 8 * 2**20
MAX_HEADERS = 64 * 2**10
AUTH_DEADLINE = 5.0  # seconds a connection may stay open without an authenticated request
READ_TIMEOUT = 30.0  # an authenticated client that stops sending its request's body
KEEP_ALIVE = 30.0  # an idle kept-alive connection
AUTH_FAILURES = 10  # failed logins from one address within AUTH_WINDOW before it is refused
AUTH_WINDOW = 60.0


# -- authentication -----------------------------------------------------------------------------


class AuthGuard:
    """Checks the token; audits and rate-limits wrong tokens per client address.

    Past AUTH_FAILURES failures within AUTH_WINDOW an address gets 429 (with Retry-After) and
    its connection closed, and its further failures are counted but not audited one by one
    (one audit line says it was locked out), so nobody can flood the audit log. The right
    token is still accepted then: a local attacker must not be able to lock the operator out,
    and a 256-bit token cannot be guessed however fast one tries."""

    def __init__(self, token: str, kernel: Kernel, gate: "ConnectionGate | None" = None) -> None:
        self.token = token.encode()
        self.kernel = kernel
        self.gate = gate
        self.failures: dict[str, deque[float]] = {}
        self.refused = 0  # failed authentications, for /metrics

    def check(self, request: Request, given: str | None) -> None:
        client = request.scope.get("client")
        if given is not None and hmac.compare_digest(given.encode(), self.token):
            if self.gate is not None and client:
                self.gate.authenticated(tuple(client))
            return
        self.refused += 1
        if not given:  # no credential at all: nobody tried to log in, so nothing to audit or slow down
            raise HttpError(401, "this needs the daemon's token: Authorization: Bearer <daemon.token>", "invalid_api_key")
        host = client[0] if client else "?"
        now = time.monotonic()
        recent = self.failures.setdefault(host, deque())
        while recent and recent[0] < now - AUTH_WINDOW:
            recent.popleft()
        if len(self.failures) > 4096:  # addresses that stopped failing long ago
            for old in [h for h, q in self.failures.items() if not q or q[-1] < now - AUTH_WINDOW]:
                del self.failures[old]
        recent.append(now)
        if len(recent) > AUTH_FAILURES:
            if len(recent) == AUTH_FAILURES + 1:
                self._audit(host, request, "EAGAIN")
            retry = max(1, math.ceil(recent[0] + AUTH_WINDOW - now))
            raise HttpError(429, f"too many failed authentications from {host}; try again in {retry} s",
                            "too_many_auth_failures", headers={"retry-after": str(retry), "connection": "close"})
        self._audit(host, request, "EPERM")
        raise HttpError(401, "missing or wrong API key: use the daemon's token (daemon.token in its data directory)",
                        "invalid_api_key")

    def _audit(self, host: str, request: Request, result: str) -> None:
        args = {"door": "http", "client": host, "method": request.method, "path": request.url.path}
        self.kernel.audit.record(0, "auth", args, result, 0.0)


# -- the app ------------------------------------------------------------------------------------


def make_app(kernel: Kernel, token: str, gate: "ConnectionGate | None" = None, telemetry: Any = None) -> FastAPI:
    from llmos.servers import console, metrics, openai_api

    guard = AuthGuard(token, kernel, gate)
    scheme = HTTPBearer(auto_error=False, description="the daemon's token (daemon.token in its data directory)")

    async def authenticated(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        guard.check(request, creds.credentials if creds is not None else None)

    app = FastAPI(
        title="llmos daemon", version="1", docs_url=None, redoc_url=None,
        description="OpenAI-compatible chat completions, Prometheus metrics and the syscall API of an llmos kernel. "
                    "Every route but /health, the console's page and /openapi.json needs `Authorization: Bearer <token>`.",
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.include_router(openai_api.router(kernel, authenticated))
    app.include_router(metrics.router(kernel, authenticated, guard, telemetry))
    console.install(app, kernel, authenticated, telemetry)
    _document_served_model(app, kernel)

    @app.exception_handler(HttpError)
    async def on_http_error(request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        param = ".".join(loc)
        if err.get("type") == "json_invalid":
            param = ""
        return JSONResponse(HttpError(400, f"{param or 'body'}: {err.get('msg', 'invalid')}", "invalid_request",
                                      param or None).body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def on_starlette(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.url.path} does not take {request.method}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(HttpError(exc.status_code, message).body(), exc.status_code, headers=exc.headers)

    return app


def _document_served_model(app: FastAPI, kernel: Kernel) -> None:
    """The document names the one model this daemon serves, so a client (or a fuzzer) built from
    it asks for that model, as the API requires."""
    from llmos.servers.openai_api import model_id

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            request = schema.get("components", {}).get("schemas", {}).get("CompletionRequest", {})
            request.get("properties", {}).get("model", {})["enum"] = [model_id(kernel)]
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, by Content-Length before reading
    and by counting when the body comes chunked. The body is read before the app runs, so no
    route ever holds a half-received request."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await _too_large(send, self.limit)
        chunks, size = [], 0
        with trio.move_on_after(READ_TIMEOUT) as reading:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.limit:
                    return await _too_large(send, self.limit)
                if not message.get("more_body"):
                    break
        if reading.cancelled_caught:
            return await _refuse_with(send, 408, f"the request body did not arrive within {READ_TIMEOUT:g} s")
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect, for streaming responses

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int) -> None:
    await _refuse_with(send, 413, f"request body over {limit} bytes")


async def _refuse_with(send: Any, status: int, message: str) -> None:
    body = json.dumps(HttpError(status, message).body()).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# -- connections --------------------------------------------------------------------------------


@dataclass
class Slot:
    scope: trio.CancelScope
    authenticated: bool = False
    shed: bool = False


@dataclass
class ConnectionGate:
    """Admission of HTTP connections (see the module's docstring)."""

    max_clients: int
    auth_deadline: float = AUTH_DEADLINE
    open: "OrderedDict[tuple, Slot]" = field(default_factory=OrderedDict)
    shed: int = 0  # unauthenticated connections closed to make room or at their deadline
    refused: int = 0  # connections refused with 503 (all slots authenticated)

    async def serve(self, stream: trio.SocketStream, handle: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
        key = _peer(stream)
        if len(self.open) >= self.max_clients and not self._shed_one():
            self.refused += 1
            await _refuse(stream)
            return
        conn = Slot(trio.CancelScope(deadline=trio.current_time() + self.auth_deadline))
        self.open[key] = conn
        try:
            with conn.scope:
                await handle(stream)
            if conn.scope.cancelled_caught and not conn.authenticated:
                self.shed += 1
        finally:
            if self.open.get(key) is conn:
                del self.open[key]
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def authenticated(self, key: tuple) -> None:
        conn = self.open.get(key[:2])
        if conn is not None and not conn.authenticated:
            conn.authenticated = True
            conn.scope.deadline = math.inf

    def _shed_one(self) -> bool:
        for key, conn in self.open.items():
            if not conn.authenticated:
                del self.open[key]
                conn.scope.cancel()
                return True
        return False


def _peer(stream: trio.SocketStream) -> tuple:
    try:
        return tuple(stream.socket.getpeername()[:2])
    except OSError:
        return ("?", id(stream))


async def _refuse(stream: trio.SocketStream) -> None:
    body = json.dumps(HttpError(503, "too many connections; try later").body()).encode()
    head = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"retry-after: 1\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n")
    with trio.move_on_after(1):
        try:
            await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await stream.aclose()


# -- serving ------------------------------------------------------------------------------------


async def serve_http(
    kernel: Kernel, token: str, host: str, port: int, max_clients: int, telemetry: Any = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port and serve the app until cancelled; reports the bound port."""
    from hypercorn.config import Config
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import wrap_app

    class Connection(TCPServer):
        async def _read_data(self) -> None:
            await super()._read_data()
            # The client has closed its end: nothing to keep alive. (TCPServer would otherwise
            # wait out the keep-alive timer, and the connection would hold its slot meanwhile.)
            await self.idle_task.stop()

    gate = ConnectionGate(max_clients, AUTH_DEADLINE)
    app = make_app(kernel, token, gate, telemetry)
    config = Config()
    config.keep_alive_timeout = KEEP_ALIVE
    # No read timeout on the connection: hypercorn's would close one whose client sends nothing
    # for that long, which a client waiting on a long streamed completion does (all 32 agents'
    # streams of bench serve were cut at 30 s on a slow run). A request's body has READ_TIMEOUT
    # (BodyLimit); unauthenticated connections their deadline (ConnectionGate); idle ones
    # keep-alive.
    config.read_timeout = None
    config.h11_max_incomplete_size = MAX_HEADERS
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = _stderr_logger()
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def handle(stream: trio.SocketStream) -> None:
        await Connection(wrapped, config, context, {}, stream).run()

    async def admit(stream: trio.SocketStream) -> None:
        try:
            await gate.serve(stream, handle)
        except Exception as exc:  # a bug of ours, never the daemon's end
            print(f"llmos http: connection handler failed: {exc!r}", file=sys.stderr)

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(admit, listeners)


def _stderr_logger() -> Any:
    import logging

    logger = logging.getLogger("llmos.http")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("llmos http: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger
