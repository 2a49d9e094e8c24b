"""Messages between processes: ipc.send and ipc.recv.

A message body is any JSON value up to MAX_BODY bytes of JSON, with an optional tag;
`ipc.recv` takes the oldest message matching a sender and/or tag, waiting for one.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from llmos.abi.catalogue import declare

MAX_BODY = 64 * 1024  # bytes of JSON
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class SendRequest(BaseModel):
    model_config = {"extra": "forbid"}
    pid: int = Field(description="the receiving process")
    body: Any = Field(description="the message")
    tag: Tag | None = Field(default=None, description='a label the receiver can select on, e.g. "result"')


class Sent(BaseModel):
    to: int
    pending: int  # messages now waiting in the receiver's mailbox


class RecvRequest(BaseModel):
    model_config = {"extra": "forbid"}
    from_pid: int | None = Field(default=None, description="only a message from this process")
    tag: Tag | None = Field(default=None, description="only a message with this tag")
    timeout: float | None = Field(
        default=None, ge=0, le=86400, description="seconds to wait at most (0: do not wait); forever if omitted"
    )


class Received(BaseModel):
    sender: int
    tag: str | None
    body: Any
    sent: float
    pending: int  # messages still waiting in the caller's mailbox


declare("ipc.send", SendRequest, Sent, doc="Send a message (any JSON value up to 64 KiB) to process `pid`'s mailbox.")
declare(
    "ipc.recv", RecvRequest, Received,
    doc="Receive the oldest message in the caller's mailbox, waiting for one if there is none.",
)  # fmt: skip
