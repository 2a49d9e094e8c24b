"""The kernel's event bus: log lines, generated text and process lifecycle, for whoever watches.

Watchers (the shell's `logs -f`, the demo's live view, a daemon client) get a bounded channel;
a watcher that falls behind loses events rather than slowing the kernel down.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import trio

WATCHER_BUFFER = 4096


@dataclass
class Event:
    pid: int
    kind: str  # "log" | "text" | "spawn" | "exit" | "signal" | "kernel" (pid 0: the model loading)
    text: str
    time: float = field(default_factory=time.time)


class EventBus:
    def __init__(self) -> None:
        self._watchers: list[trio.MemorySendChannel[Event]] = []
        self.dropped = 0

    def publish(self, event: Event) -> None:
        for send in list(self._watchers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._watchers.remove(send)

    @contextmanager
    def watch(self) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        send, recv = trio.open_memory_channel[Event](WATCHER_BUFFER)
        self._watchers.append(send)
        try:
            yield recv
        finally:
            if send in self._watchers:
                self._watchers.remove(send)
            send.close()
