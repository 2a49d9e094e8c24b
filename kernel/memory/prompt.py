"""Turn assembly: a memory's resident pages as the chat messages the model sees, and what they cost.

Pinned pages come first (history order), then the other resident pages in the order they
entered RAM (pagetable.py: a page keeps its place while it stays resident, a page paged back
in is appended), so between two turns the prompt changes as late as it can and the engine's
longest-common-prefix KV reuse prefills only from the first change. Neighbouring pages of one
message join again into one message. Recalled pages that follow one another form one message
that says it is recalled and when each part was said ("[recalled memory, 8 May 2023] ...\\n
[20 May 2023] ..."), so a block of recalled pages pays for one message frame, and a block that
grows at its end stays a prefix of itself. When the memory spans more than one day, a message
that starts a new day says its date, so the model can place "yesterday" and answer when.

Everything the assembly adds (marks, dates, separators, the chat template's frame of each
message and of the reply) is counted with the model's own chat template (`Framing.count`), so
a prompt can be held to its memory's budget exactly.
"""

from __future__ import annotations

from typing import Callable

from llmos.kernel.memory.pagetable import Page
from llmos.kernel.memory.when import day

RECALLED = "[recalled memory"  # what a block of paged-in pages says first: "[recalled memory, 8 May 2023] "
SEPARATOR = "\n"  # between the pages of a recalled block that are not parts of one message

Messages = list[dict[str, str]]


def recalled_mark(page: Page) -> str:
    return f"{RECALLED}, {day(page.time)}] "


def day_mark(page: Page) -> str:
    return f"[{day(page.time)}] "


def assemble(order: list[Page], dated: bool) -> Messages:
    """Pages in prompt order as chat messages; `dated`: the memory spans more than one day."""
    messages: Messages = []
    last: Page | None = None
    last_day: str | None = None  # of the last page from the history (not recalled, not pinned)
    for page in order:
        text = page.text or ""
        if last is not None and page.recalled == last.recalled and page.pinned == last.pinned:
            if page.message == last.message:  # the rest of one message
                messages[-1]["content"] += text
                last = page
                continue
            if page.recalled and page.role == last.role:  # a recalled block goes on
                mark = day_mark(page) if day(page.time) != day(last.time) else ""
                messages[-1]["content"] += SEPARATOR + mark + text
                last = page
                continue
        if page.recalled:
            mark = recalled_mark(page)
        elif dated and not page.pinned and day(page.time) != last_day:
            mark = day_mark(page)
        else:
            mark = ""
        if not page.pinned and not page.recalled:
            last_day = day(page.time)
        messages.append({"role": page.role, "content": mark + text})
        last = page
    return messages


def plain_chat(encode: Callable[[str], list[int]]) -> Callable[[Messages], list[int]]:
    """A model without a chat template: the backend's fallback format."""
    return lambda messages: encode("".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:")


class Framing:
    """Token counts of assembled prompts, exact (`count`, through the model's chat template)
    and estimated per page (`cost`, for filling a budget before the prompt exists)."""

    def __init__(self, encode: Callable[[str], list[int]], encode_chat: Callable[[Messages], list[int]]) -> None:
        self.encode = encode
        self.encode_chat = encode_chat
        self._frame: dict[str, int] = {}
        self._marks: dict[str, int] = {}

    def count(self, messages: Messages) -> int:
        """The prompt's tokens as the model gets them, with its reply's opening."""
        return len(self.encode_chat(messages))

    def frame(self, role: str) -> int:
        """What the chat template adds around one more message of `role`."""
        if role not in self._frame:
            # after a system message, so that templates that add a default one add it to neither
            base = [{"role": "system", "content": "s"}]
            one = self.count(base + [{"role": role, "content": "x"}]) - self.count(base) - len(self.encode("x"))
            self._frame[role] = max(0, one)
        return self._frame[role]

    def mark(self, text: str) -> int:
        if text not in self._marks:
            if len(self._marks) > 4096:
                self._marks.clear()
            self._marks[text] = len(self.encode(text))
        return self._marks[text]

    def block(self, page: Page) -> int:
        """The frame of a recalled block that `page` opens."""
        return self.frame(page.role) + self.mark(recalled_mark(page))

    def cost(self, page: Page, recalled: bool, dated: bool, starts_message: bool) -> int:
        """About what `page` adds to a prompt: its tokens, and for a recalled page its separator
        and date inside a block (a block's own frame is `block`); for a page from the history
        that starts its message, the message frame and, when dated, half a date (a date is said
        only where the day changes)."""
        half_date = self.mark(day_mark(page)) // 2 if dated else 0
        if recalled:
            return page.tokens + self.mark(SEPARATOR) + half_date
        if not starts_message:
            return page.tokens
        return page.tokens + self.frame(page.role) + half_date
