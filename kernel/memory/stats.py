"""Latency statistics of the memory manager: recent samples per page, and their percentiles."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

LATENCY_SAMPLES = 4096


def _samples() -> deque[float]:
    return deque(maxlen=LATENCY_SAMPLES)


@dataclass
class Latencies:
    """Milliseconds, recent samples: page_out per page evicted (a clean page's next to
    nothing), page_in per page, writeback per page written in the background; per chat turn,
    the fault (ranking and paging in) and the whole turn before the prompt goes to the model
    (storing and embedding the turn, the fault, evictions); embed per text."""

    page_out: deque[float] = field(default_factory=_samples)
    page_in: deque[float] = field(default_factory=_samples)
    writeback: deque[float] = field(default_factory=_samples)
    fault: deque[float] = field(default_factory=_samples)
    turn: deque[float] = field(default_factory=_samples)
    embed: deque[float] = field(default_factory=_samples)


def percentile(samples: deque[float] | list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def p99(samples: deque[float] | list[float]) -> float:
    return percentile(samples, 0.99)
