"""Mailboxes: messages between processes (ipc.send / ipc.recv).

Each process has a mailbox, a bounded FIFO. `take` removes the oldest message that matches a
sender and a tag. Waiting for one is the kernel's business (`Kernel.receive`: the receiver
blocks on its wait channel, woken by the next send to it or by an exit); this is the data.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAILBOX_CAPACITY = 1024  # messages waiting per process; a sender beyond it gets EAGAIN
MAILBOX_BYTES = 4 * 1024 * 1024  # and their bodies' size together, so floods cannot eat memory


@dataclass
class Message:
    sender: int
    to: int
    body: Any
    tag: str | None = None
    size: int = 0  # bytes of the body as JSON
    sent: float = field(default_factory=time.time)

    def matches(self, sender: int | None, tag: str | None) -> bool:
        return (sender is None or self.sender == sender) and (tag is None or self.tag == tag)


class MailboxFull(Exception):
    pass


@dataclass
class Mailbox:
    messages: deque[Message] = field(default_factory=deque)
    size: int = 0  # bytes waiting


class Mailboxes:
    """pid -> Mailbox, created on first use, dropped when the process exits."""

    def __init__(self, capacity: int = MAILBOX_CAPACITY, max_bytes: int = MAILBOX_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.boxes: dict[int, Mailbox] = {}

    def box(self, pid: int) -> Mailbox:
        box = self.boxes.get(pid)
        if box is None:
            box = self.boxes[pid] = Mailbox()
        return box

    def send(self, message: Message) -> None:
        box = self.box(message.to)
        if len(box.messages) >= self.capacity or box.size + message.size > self.max_bytes:
            raise MailboxFull(
                f"mailbox of process {message.to} is full ({len(box.messages)} messages, {box.size} bytes waiting)"
            )
        box.messages.append(message)
        box.size += message.size

    def take(self, pid: int, sender: int | None = None, tag: str | None = None) -> Message | None:
        box = self.box(pid)
        for i, message in enumerate(box.messages):
            if message.matches(sender, tag):
                del box.messages[i]
                box.size -= message.size
                return message
        return None

    def put_back(self, message: Message) -> None:
        """Return a message taken but not delivered to the front of its mailbox (over capacity
        if need be: it was already accepted once)."""
        box = self.box(message.to)
        box.messages.appendleft(message)
        box.size += message.size

    def pending(self, pid: int) -> int:
        box = self.boxes.get(pid)
        return len(box.messages) if box else 0

    def close(self, pid: int) -> None:
        """`pid` exited: its unread messages are dropped."""
        self.boxes.pop(pid, None)
