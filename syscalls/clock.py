"""time.now: the wall clock, for agents that need today's date or a timestamp."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from llmos.abi.tools import Now
from llmos.syscalls.tools import tool


@tool("time.now", timeout=1.0)
async def now() -> Now:
    t = time.time()
    local = datetime.fromtimestamp(t).astimezone()
    return Now(
        unix=round(t, 6),
        utc=datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds"),
        local=local.isoformat(timespec="seconds"),
        timezone=local.tzname() or "",
    )
