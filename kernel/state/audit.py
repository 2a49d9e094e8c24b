"""The audit log: one JSON line per syscall, whatever its outcome.

    {"time": 1767000000.123, "pid": 7, "syscall": "fs.write", "args": {"path": "report.md",
     "content": "<str 2048 chars>"}, "result": "OK", "duration_ms": 0.412}

`result` is "OK", an errno ("EPERM", "EINVAL", ...), "CANCELLED" (the caller was cancelled or
killed mid-call) or "EXIT" (proc.exit). Arguments are summarised, never copied whole: what a
file held or a prompt said stays out of the log; short scalars and the shape of the rest are
kept. The file lives at LLMOS_AUDIT_LOG or <data dir>/audit.jsonl and is rotated to `.1` when
it passes `max_bytes`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from llmos.config import data_dir

MAX_BYTES = 64 * 1024 * 1024
SHORT_STR = 64  # strings up to this length are logged as they are
MAX_KEYS = 16
MAX_COUNTED_NAMES = 512  # distinct syscall names counted; the rest (junk from clients) count as "(other)"


def default_path() -> Path:
    return Path(os.environ.get("LLMOS_AUDIT_LOG") or data_dir() / "audit.jsonl")


class AuditLog:
    def __init__(self, path: Path | None = None, max_bytes: int = MAX_BYTES) -> None:
        self.path = path or default_path()
        self.max_bytes = max_bytes
        self.records = 0
        self.counts: Counter[tuple[str, str]] = Counter()  # (syscall, result) -> calls, for /metrics
        self._names: set[str] = set()
        self._file: TextIO | None = None

    def record(self, pid: int, syscall: Any, args: Any, result: str, duration: float) -> None:
        self._count(syscall, result)
        line = json.dumps(
            {
                "time": round(time.time(), 6),
                "pid": pid,
                "syscall": syscall if isinstance(syscall, str) else _scalar(syscall),
                "args": summarize(args),
                "result": result,
                "duration_ms": round(duration * 1000, 3),
            }
        )  # ASCII-escaped: a lone surrogate in an argument cannot break the file's encoding
        try:
            f = self._open()
            f.write(line + "\n")
            f.flush()
            self.records += 1
            if f.tell() > self.max_bytes:
                self._rotate()
        except OSError:
            pass  # a full disk must not stop syscalls; the counter shows what was written

    def _count(self, syscall: Any, result: str) -> None:
        name = syscall if isinstance(syscall, str) and 0 < len(syscall) <= SHORT_STR else "(invalid)"
        if result == "ENOSYS":
            name = "(no such syscall)"  # whatever a client made up is not a name worth a series
        if name not in self._names:
            if len(self._names) >= MAX_COUNTED_NAMES:
                name = "(other)"
            else:
                self._names.add(name)
        self.counts[(name, result)] += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> TextIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        return self._file

    def _rotate(self) -> None:
        self.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))


def summarize(args: Any) -> Any:
    """The arguments' shape: short scalars as they are, the rest by type and size."""
    if hasattr(args, "model_dump"):
        args = args.model_dump()
    if args is None:
        return {}
    if not isinstance(args, dict):
        return _scalar(args)
    out: dict[str, Any] = {}
    for i, (key, value) in enumerate(args.items()):
        if i == MAX_KEYS:
            out["..."] = f"{len(args) - MAX_KEYS} more"
            break
        out[str(key)[:SHORT_STR]] = _scalar(value)
    return out


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else f"<int {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= SHORT_STR else f"<str {len(value)} chars>"
    if isinstance(value, (list, tuple)):
        return f"<list {len(value)} items>"
    if isinstance(value, dict):
        return f"<object {len(value)} keys>"
    return f"<{type(value).__name__}>"
