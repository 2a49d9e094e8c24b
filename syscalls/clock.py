"""time.now: the wall clock, for agents that need today's date or a timestamp."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from pydantic import BaseModel

from llmos.syscalls.tools import tool


class Now(BaseModel):
    unix: float  # seconds since the epoch
    utc: str  # ISO 8601
    local: str  # ISO 8601 with the machine's offset
    timezone: str


@tool("time.now", timeout=1.0)
async def now() -> Now:
    """The current date and time (UTC and local)."""
    t = time.time()
    local = datetime.fromtimestamp(t).astimezone()
    return Now(
        unix=round(t, 6),
        utc=datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds"),
        local=local.isoformat(timespec="seconds"),
        timezone=local.tzname() or "",
    )
