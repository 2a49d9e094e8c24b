"""The web console: a page served by the daemon, and the syscall door it uses.

    GET  /                          the page (no token: the page asks for it, or takes ?token=
                                    once, keeps it in sessionStorage and removes it from the URL)
    GET  /console/...               its script, style and icon (package data; nothing from the internet)
    POST /api/syscalls/{name}       a syscall, dispatched as the console's session process: the same
                                    door, validation, capability check and audit line as any client's;
                                    body = the arguments; `Accept: text/event-stream` streams its chunks
    GET  /api/live                  server-sent events, one a second: kernel.stat and proc.ps (both
                                    dispatched as the console's session) with the telemetry's rates,
                                    resident pages and chart history
    GET  /api/procs/{pid}/quota     a process's quota, its use and what is left

The console's session process ("console" in ps) is made on first use and made again if it is
killed; processes spawned from the page are its children.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.proc import ProcessExit
from llmos.kernel.kernel import Kernel, TableFull
from llmos.kernel.proc.process import Process
from llmos.kernel.proc.quota import tokens_used
from llmos.servers.httperrors import ERROR_RESPONSES, STATUS_OF, HttpError
from llmos.syscalls.table import dispatch

STATIC = Path(__file__).parent / "console"
LIVE_INTERVAL = 1.0
# The token arrives in the page's URL once: no referrer may carry it elsewhere, no script but ours runs.
PAGE_HEADERS = {
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
}


class ConsoleSession:
    """The console's session process, made on first use and again if it has ended."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.proc: Process | None = None

    def pid(self) -> int:
        if self.proc is None or not self.proc.alive:
            try:
                self.proc = self.kernel.session("console")
            except TableFull as exc:
                raise SyscallError(Errno.EAGAIN, str(exc)) from None
        return self.proc.pid


class EventStream(Response):
    """Server-sent events written by `produce(send_event)` until it returns or the client leaves."""

    media_type = "text/event-stream"

    def __init__(self, produce: Callable[[Callable[[str, Any], Awaitable[None]]], Awaitable[None]]) -> None:
        super().__init__(media_type=self.media_type, headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # sent chunked
        self.produce = produce

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def event(kind: str, data: Any) -> None:
            payload = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": payload, "more_body": True})

        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self.produce(event)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()


def install(app: FastAPI, kernel: Kernel, authenticated: Any, telemetry: Any) -> None:
    app.mount("/console", StaticFiles(directory=STATIC, packages=None), name="console")
    app.include_router(router(kernel, authenticated, telemetry))


def router(kernel: Kernel, authenticated: Any, telemetry: Any) -> APIRouter:
    session = ConsoleSession(kernel)
    api = APIRouter()
    guarded = APIRouter(prefix="/api", dependencies=[Depends(authenticated)], responses=ERROR_RESPONSES, tags=["console"])

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @api.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "icon.svg", media_type="image/svg+xml")

    @guarded.post("/syscalls/{name}", responses={200: {"description": "`{\"result\": ...}` or, streamed, events "
                                                       "`chunk` then `result` or `error`"}})
    async def syscall(name: str, request: Request, args: dict[str, Any] | None = Body(default=None)) -> Response:
        """Any syscall, as the console's session process. Errors: `{"error": {"errno", "message", "details"}}`."""
        if "text/event-stream" in request.headers.get("accept", ""):
            async def produce(event: Callable[[str, Any], Awaitable[None]]) -> None:
                async def emit(chunk: Any) -> None:
                    await event("chunk", chunk.model_dump(mode="json"))

                try:
                    result = await _dispatch(kernel, session, name, args, emit)
                    await event("result", result.model_dump(mode="json"))
                except SyscallError as err:
                    await event("error", err.info().model_dump(mode="json"))

            return EventStream(produce)
        try:
            result = await _dispatch(kernel, session, name, args)
        except SyscallError as err:
            return JSONResponse({"error": err.info().model_dump(mode="json")}, STATUS_OF.get(err.errno, 500))
        return JSONResponse({"result": result.model_dump(mode="json")})

    @guarded.get("/live", responses={200: {"content": {"text/event-stream": {"schema": {
        "type": "object", "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}},
                                           "description": "events `history` (once) and `snapshot` (each second)"}})
    async def live() -> Response:
        """The console's live feed."""
        async def produce(event: Callable[[str, Any], Awaitable[None]]) -> None:
            await event("history", [s.as_json() for s in telemetry.samples] if telemetry is not None else [])
            while True:
                try:
                    await event("snapshot", await _snapshot(kernel, session, telemetry))
                except SyscallError as err:
                    await event("error", err.info().model_dump(mode="json"))
                await trio.sleep(LIVE_INTERVAL)

        return EventStream(produce)

    @guarded.get("/procs/{pid}/quota")
    async def quota(pid: int) -> dict[str, Any]:
        """A process's quota (None: unlimited), its use and what is left. (proc.limits answers for the
        caller only; this is its reading for any process, as the operator may see them all.)"""
        proc = kernel.procs.lookup(pid)
        if proc is None or pid not in kernel.caps:
            raise HttpError(404, f"no such process: {pid}", "ESRCH")
        q = kernel.caps[pid].quota
        end = proc.ended or time.time()
        left = q.left_for(proc, end)
        pages = telemetry.resident_pages().get(pid, 0) if telemetry is not None else 0
        return {"pid": pid, "quota": _limits(q),
                "used": {"tokens": tokens_used(proc), "wall_time": round(end - proc.created, 3),
                         "syscalls": proc.syscalls, "memory_pages": pages},
                "left": _limits(left)}

    api.include_router(guarded)
    return api


def _limits(q: Any) -> dict[str, Any]:
    return {"max_tokens": q.max_tokens, "max_wall_time": q.max_wall_time, "max_syscalls": q.max_syscalls,
            "max_memory_pages": q.max_memory_pages}


async def _dispatch(kernel: Kernel, session: ConsoleSession, name: str, args: Any, emit: Any = None) -> Any:
    try:
        return await dispatch(kernel, session.pid(), name, args, emit)
    except ProcessExit:  # never for a session, but dispatch may say so
        raise SyscallError(Errno.EINVAL, "the console's session cannot exit") from None


async def _snapshot(kernel: Kernel, session: ConsoleSession, telemetry: Any) -> dict[str, Any]:
    stat = await _dispatch(kernel, session, "kernel.stat", {})
    ps = await _dispatch(kernel, session, "proc.ps", {})
    pages = telemetry.resident_pages() if telemetry is not None else {}
    procs = []
    for p in ps.procs:
        row = p.model_dump(mode="json")
        row["pages"] = pages.get(p.pid)
        row["tok_s"] = round(telemetry.proc_tokens_per_second(p.pid), 2) if telemetry is not None else 0.0
        procs.append(row)
    sample = telemetry.samples[-1].as_json() if telemetry is not None and telemetry.samples else None
    return {"stat": stat.model_dump(mode="json"), "procs": procs, "sample": sample, "console_pid": session.pid(),
            "model_loaded": bool(getattr(kernel.backend, "loaded", True))}
