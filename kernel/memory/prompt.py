"""Turn assembly: a memory's resident pages as the chat messages the model sees.

Pinned pages come first, then the other resident pages in history order. Neighbouring pages of
one message join again into one message; a recalled page starts a message of its own that
says it is recalled and when it was said. When the prompt spans more than one day, a message
that starts a new day says its date, so the model can place "yesterday" and answer when. The
prompt is a function of the page state only, so the engine's longest-common-prefix KV reuse
rebuilds a process's KV only from the first page that changed.
"""

from __future__ import annotations

from llmos.kernel.memory.pagetable import Page
from llmos.kernel.memory.when import day

RECALLED = "[recalled memory"  # what a paged-in page says before its text: "[recalled memory, 8 May 2023] "


def recalled_mark(page: Page) -> str:
    return f"{RECALLED}, {day(page.time)}] "


def assemble(order: list[Page]) -> list[dict[str, str]]:
    """Pages in prompt order as chat messages."""
    dated = len({day(p.time) for p in order if not p.pinned}) > 1
    messages: list[dict[str, str]] = []
    last: tuple[int, bool] | None = None
    last_day: str | None = None
    for page in order:
        key = (page.message, page.recalled)
        if messages and key == last:
            messages[-1]["content"] += page.text or ""
            continue
        if page.recalled:
            mark = recalled_mark(page)
        elif dated and not page.pinned and day(page.time) != last_day:
            mark = f"[{day(page.time)}] "
        else:
            mark = ""
        if not page.pinned and not page.recalled:
            last_day = day(page.time)
        messages.append({"role": page.role, "content": mark + (page.text or "")})
        last = key
    return messages
