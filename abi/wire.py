"""The wire protocol: JSON lines over a stream socket, shared by the daemon, its clients and agent workers.

One frame is one JSON object on one line (UTF-8). Calls are multiplexed by `id`, chosen by
the client and unique among its calls in flight.

client -> daemon
  {"id": 1, "op": "hello", "token": "...", "name": "shell", "root": "/home/me"}
        must come first: checks the token and opens a session process for this connection
        (`root`, optional, is the session's fs root); the result is {"pid", "name", "model"}
  {"id": 2, "op": "call", "name": "llm.chat", "args": {...}}
        a syscall made by the session process, exactly as an in-process agent makes it
  {"id": 2, "op": "cancel"}
        abandon call 2: its syscall is cancelled and sends nothing more

daemon -> client
  {"id": 2, "chunk": {...}}     zero or more stream chunks (TABLE[name].chunk)
  {"id": 2, "result": {...}}    the response (TABLE[name].response); ends the call
  {"id": 2, "error": {"errno": "EINVAL", "message": "...", "details": [...]}}   ends the call
An error about a frame that could not be read at all carries "id": null.

An agent worker speaks the same protocol over its private channel to the kernel, without the
hello (the channel is its identity: the kernel knows whose it is because it made it), plus
one frame of its own, its last:
  {"id": 0, "op": "exit", "code": 0, "reason": "exited", "result": ...}
        the program returned (or raised: code 1 and the traceback as reason)
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Protocol, Union

from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from llmos.abi.errors import Errno, ErrorInfo, SyscallError

MAX_FRAME = 8 * 2**20  # a request frame: fs.write carries up to 4 MiB, escaped
MAX_REPLY_FRAME = 64 * 2**20  # what a client accepts from the daemon
MAX_ID = 2**53  # ids stay exact in every JSON implementation
PROTOCOL_VERSION = 1

FrameId = Annotated[StrictInt, Field(ge=0, lt=MAX_ID)]


class Hello(BaseModel):
    model_config = {"extra": "forbid"}
    op: Literal["hello"]
    id: FrameId
    token: StrictStr = Field(max_length=512)
    name: StrictStr = Field(default="client", min_length=1, max_length=64)
    root: StrictStr | None = Field(default=None, max_length=4096)


class CallFrame(BaseModel):
    model_config = {"extra": "forbid"}
    op: Literal["call"]
    id: FrameId
    name: StrictStr = Field(min_length=1, max_length=128)
    args: dict[str, Any] = Field(default_factory=dict)


class CancelFrame(BaseModel):
    model_config = {"extra": "forbid"}
    op: Literal["cancel"]
    id: FrameId


class ExitFrame(BaseModel):
    """A worker's last frame: how its program ended."""

    model_config = {"extra": "forbid"}
    op: Literal["exit"]
    id: FrameId
    code: int = Field(ge=0, le=255)
    reason: StrictStr = Field(max_length=64 * 1024)
    result: Any = None


ClientFrame = Annotated[Union[Hello, CallFrame, CancelFrame], Field(discriminator="op")]
WorkerFrame = Annotated[Union[CallFrame, CancelFrame, ExitFrame], Field(discriminator="op")]
_client_frame: TypeAdapter[Hello | CallFrame | CancelFrame] = TypeAdapter(ClientFrame)
_worker_frame: TypeAdapter[CallFrame | CancelFrame | ExitFrame] = TypeAdapter(WorkerFrame)


class HelloReply(BaseModel):
    pid: int
    name: str
    model: str
    protocol: int = PROTOCOL_VERSION


class FrameError(SyscallError):
    """A frame the daemon cannot act on; `frame_id` is its id when that much could be read."""

    def __init__(self, errno: Errno, message: str, frame_id: int | None = None) -> None:
        super().__init__(errno, message)
        self.frame_id = frame_id


def parse_client_frame(line: bytes) -> Hello | CallFrame | CancelFrame:
    """Decode one request line. Raises FrameError with the reason; never anything else."""
    return _parse(line, _client_frame)  # type: ignore[return-value]


def parse_worker_frame(line: bytes) -> CallFrame | CancelFrame | ExitFrame:
    """Decode one line from an agent worker's channel (no hello; an exit frame)."""
    return _parse(line, _worker_frame)  # type: ignore[return-value]


def _parse(line: bytes, adapter: TypeAdapter) -> BaseModel:
    try:
        obj = json.loads(line)
    except RecursionError:
        raise FrameError(Errno.EINVAL, "malformed frame: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(Errno.EINVAL, f"malformed frame: not JSON ({_short(exc)})") from None
    if not isinstance(obj, dict):
        raise FrameError(Errno.EINVAL, f"malformed frame: expected a JSON object, got {type(obj).__name__}")
    frame_id = obj.get("id")
    frame_id = frame_id if type(frame_id) is int and 0 <= frame_id < MAX_ID else None
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'frame'}: {e['msg']}" for e in exc.errors()[:5])
        raise FrameError(Errno.EINVAL, f"malformed frame: {reasons}", frame_id) from None
    except RecursionError:
        raise FrameError(Errno.EINVAL, "malformed frame: nested too deeply", frame_id) from None


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"), default=_fallback).encode() + b"\n"


def error_frame(frame_id: int | None, err: SyscallError) -> dict[str, Any]:
    return {"id": frame_id, "error": err.info().model_dump(mode="json")}


def error_from(frame: dict[str, Any]) -> SyscallError:
    try:
        return SyscallError.from_info(ErrorInfo.model_validate(frame["error"]))
    except (ValidationError, TypeError, KeyError):
        return SyscallError(Errno.EIO, f"unreadable error from the daemon: {str(frame)[:200]}")


def _fallback(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return repr(value)


def _short(exc: Exception) -> str:
    return str(exc)[:120]


class ReceiveStream(Protocol):
    """What LineReader reads from: a trio stream, or anything with the same method."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


class Oversized:
    """Returned by LineReader in place of a line longer than its limit (which is skipped)."""

    def __init__(self, size: int) -> None:
        self.size = size


class LineReader:
    """Splits a byte stream into lines of at most `limit` bytes. A longer line is not kept in
    memory: it is skipped up to its newline and reported once as Oversized."""

    def __init__(self, stream: ReceiveStream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no newline

    async def next(self) -> bytes | Oversized | None:
        """The next line without its newline; None at end of stream."""
        skipped = 0
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                self._scanned = 0
                if skipped:
                    return Oversized(skipped + len(line))
                if len(line) > self.limit:
                    return Oversized(len(line))
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > self.limit:  # drop what we have; keep reading to the newline
                skipped += len(self._buf)
                self._buf.clear()
                self._scanned = 0
            data = await self.stream.receive_some(65536)
            if not data:
                if skipped:
                    return Oversized(skipped + len(self._buf))
                if self._buf:  # a last line without its newline still counts
                    line, self._buf = bytes(self._buf), bytearray()
                    return line
                return None
            self._buf += data
