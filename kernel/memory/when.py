"""Time in memory: the periods a question names, and how a page's time is shown.

Every page keeps the time its message was said (`Page.time`; a conversation imported with
`mem.store(time=...)` keeps its own dates). A question that names a period ("in May 2023",
"on 8 June", "in 2022") favours the pages said within it; a recalled page shows its date in
the prompt, so questions about when can be answered from it.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS |= {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_MONTHS["sept"] = 9
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"((?:19|20)\d{2})"
_PATTERNS = [  # most specific first; each match consumes its text
    ("day", re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}(?:,?\s+{_YEAR})?\b", re.I), ("d", "m", "y")),
    ("day", re.compile(rf"\b{_MONTH}\s+{_DAY}(?:,?\s+{_YEAR})?\b", re.I), ("m", "d", "y")),
    ("day", re.compile(rf"\b{_YEAR}-(\d{{2}})-(\d{{2}})\b"), ("y", "m", "d")),
    ("month", re.compile(rf"\b{_MONTH},?\s+(?:of\s+)?{_YEAR}\b", re.I), ("m", "y")),
    ("month", re.compile(rf"\b(?:in|during|since|until|by|early|late|mid)\s+{_MONTH}\b", re.I), ("m",)),
    ("year", re.compile(rf"\b{_YEAR}\b"), ("y",)),
]


@dataclass(frozen=True)
class Period:
    """A span of local time [start, end); `year` None: that month or day of any year."""

    kind: str  # day | month | year
    year: int | None
    month: int | None = None
    day: int | None = None

    def contains(self, t: float) -> bool:
        when = datetime.fromtimestamp(t)
        if self.year is not None and when.year != self.year:
            return False
        if self.month is not None and when.month != self.month:
            return False
        return self.day is None or when.day == self.day

    def within(self, times: np.ndarray) -> np.ndarray:
        """Which of `times` fall in the period (vectorised `contains`)."""
        import numpy as np  # here, not at import: the kernel boots without it

        if not len(times):
            return np.zeros(0, dtype=bool)
        years = [self.year] if self.year is not None else range(
            datetime.fromtimestamp(float(times.min())).year, datetime.fromtimestamp(float(times.max())).year + 1
        )
        inside = np.zeros(len(times), dtype=bool)
        for year in years:
            start, end = self._span(year)
            inside |= (times >= start) & (times < end)
        return inside

    def _span(self, year: int) -> tuple[float, float]:
        if self.month is None:
            return datetime(year, 1, 1).timestamp(), datetime(year + 1, 1, 1).timestamp()
        if self.day is None:
            after = datetime(year + 1, 1, 1) if self.month == 12 else datetime(year, self.month + 1, 1)
            return datetime(year, self.month, 1).timestamp(), after.timestamp()
        try:
            start = datetime(year, self.month, self.day)
        except ValueError:  # 30 February
            return 0.0, 0.0
        return start.timestamp(), (start + timedelta(days=1)).timestamp()

    def near(self, t: float, days: int) -> bool:
        """Within `days` of the period (a message says "yesterday" about the day before)."""
        if self.contains(t):
            return True
        if self.kind != "day" or self.month is None or self.day is None:
            return False
        when = datetime.fromtimestamp(t)
        year = self.year if self.year is not None else when.year
        try:
            target = datetime(year, self.month, self.day)
        except ValueError:
            return False
        return abs((when.replace(hour=0, minute=0, second=0, microsecond=0) - target)) <= timedelta(days=days)


def periods(text: str) -> list[Period]:
    """The dates, months and years a text names."""
    found: list[Period] = []
    rest = text
    for kind, pattern, fields in _PATTERNS:
        for match in pattern.finditer(rest):
            values = dict(zip(fields, match.groups()))
            period = _period(kind, values)
            if period is not None:
                found.append(period)
        rest = pattern.sub(" ", rest)
    return found


def _period(kind: str, values: dict[str, str | None]) -> Period | None:
    month = values.get("m")
    m = None
    if month is not None:
        m = int(month) if month.isdigit() else _MONTHS.get(month.lower().rstrip("."))
        if m is None or not 1 <= m <= 12:
            return None
    y = int(values["y"]) if values.get("y") else None
    d = int(values["d"]) if values.get("d") else None
    if d is not None and not 1 <= d <= 31:
        return None
    return Period(kind, y, m, d)


def day(t: float) -> str:
    """A page's date as the prompt shows it: 8 May 2023."""
    when = datetime.fromtimestamp(t)
    return f"{when.day} {calendar.month_name[when.month]} {when.year}"
