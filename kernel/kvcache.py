"""Per-process KV caches, and the pool that keeps all of them within one memory budget.

Each process owns one `SequenceKV`: the keys and values of every layer for the tokens of its
context, kept between time slices so that a preempted or blocked process resumes without
prefilling again. The batched forward pass writes new keys/values straight into these buffers
and attends over them in place (see `attention.py`), so joining or leaving the running batch
costs no copy at all.

`KVPool` enforces the global budget. When the caches together exceed it, the least recently
run cache that is not in the running batch is evicted, in one of two ways:
  drop      forget it; the process prefills its context again when it next runs
  compress  keep a bfloat16 copy in RAM (half the bytes); restored when it next runs
The pool also serves prefix sharing: a new context that starts with tokens another cache
already holds (a shared system prompt) copies those keys/values instead of computing them.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import torch

GROWTH = 256  # tokens; buffers grow in steps so that decoding does not reallocate every token
MIN_SHARED_PREFIX = 16  # tokens; shorter common prefixes are not worth a lookup and a copy
EVICTION_MODES = ("drop", "compress")


@dataclass
class KVShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


class SequenceKV:
    """Keys and values for one context: buf[layer, 0=key/1=value, head, position, dim]."""

    def __init__(self, shape: KVShape, capacity: int = GROWTH) -> None:
        self.shape = shape
        self.buf = self._alloc(capacity)
        self.token_ids: list[int] = []  # tokens whose keys/values are stored, position by position
        self.packed: torch.Tensor | None = None  # the compressed copy while evicted by "compress"
        self.last_used = 0  # pool clock tick of the last step that used it

    def _alloc(self, tokens: int) -> torch.Tensor:
        s = self.shape
        return torch.empty(s.layers, 2, s.kv_heads, _round_up(tokens), s.head_dim, dtype=s.dtype)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def capacity(self) -> int:
        return self.buf.shape[3] if self.buf.dim() == 5 else 0

    @property
    def nbytes(self) -> int:
        packed = self.packed.numel() * self.packed.element_size() if self.packed is not None else 0
        return self.buf.numel() * self.buf.element_size() + packed

    @property
    def resident(self) -> bool:
        return self.packed is None

    def reserve(self, total_tokens: int) -> None:
        """Make room for `total_tokens` positions, keeping what is stored."""
        self.restore()
        if total_tokens <= self.capacity:
            return
        grown = self._alloc(max(total_tokens, self.capacity * 2))
        if self.length:
            grown[:, :, :, : self.length] = self.buf[:, :, :, : self.length]
        self.buf = grown

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (their tokens changed, or the cache was dropped)."""
        del self.token_ids[length:]

    def common_prefix(self, token_ids: list[int]) -> int:
        """How many leading positions of `token_ids` are already stored and can be reused."""
        stored = self.token_ids
        n = min(len(token_ids), len(stored))
        i = 0
        while i < n and stored[i] == token_ids[i]:
            i += 1
        return i

    def copy_prefix_from(self, other: "SequenceKV", length: int) -> None:
        """Take the first `length` positions from another (resident) cache."""
        self.reserve(length)
        self.buf[:, :, :, :length] = other.buf[:, :, :, :length]
        self.token_ids = list(other.token_ids[:length])

    # -- eviction ------------------------------------------------------------------------

    def drop(self) -> None:
        self.token_ids = []
        self.packed = None
        self.buf = self.buf.new_empty((0,))

    def compress(self) -> None:
        """Keep a bfloat16 copy of the stored positions and free the full-precision buffer."""
        if self.packed is not None:
            return
        self.packed = self.buf[:, :, :, : self.length].to(torch.bfloat16)
        self.buf = self.buf.new_empty((0,))

    def restore(self) -> None:
        """Bring a compressed cache back to full precision (before it is used again)."""
        if self.packed is None:
            return
        packed, self.packed = self.packed, None
        self.buf = self._alloc(packed.shape[3])
        self.buf[:, :, :, : packed.shape[3]] = packed.to(self.shape.dtype)


@dataclass
class KVStats:
    evictions: int = 0  # caches dropped or compressed to meet the budget
    shared_prefix_tokens: int = 0  # positions copied from another cache instead of computed


class KVPool:
    """Every live SequenceKV, the budget they share, and prefix lookup across them."""

    def __init__(self, shape: KVShape, budget_bytes: int, mode: str = "drop") -> None:
        if mode not in EVICTION_MODES:
            raise ValueError(f"unknown KV eviction mode {mode!r}; choose one of {', '.join(EVICTION_MODES)}")
        self.shape = shape
        self.budget_bytes = budget_bytes
        self.mode = mode
        self.stats = KVStats()
        self._caches: weakref.WeakSet[SequenceKV] = weakref.WeakSet()  # freed with their process
        self._clock = itertools.count(1)

    def new(self) -> SequenceKV:
        kv = SequenceKV(self.shape)
        self._caches.add(kv)
        return kv

    def touch(self, kv: SequenceKV) -> None:
        kv.last_used = next(self._clock)

    def used_bytes(self) -> int:
        return sum(kv.nbytes for kv in list(self._caches))

    def share_prefix(self, kv: SequenceKV, token_ids: list[int]) -> int:
        """Extend `kv` with the longest prefix of `token_ids` that another resident cache holds,
        if that beats what `kv` already has. Returns how many positions `kv` now reuses."""
        have = kv.common_prefix(token_ids)
        best, best_len = None, have
        for other in list(self._caches):
            if other is kv or not other.resident:
                continue
            n = other.common_prefix(token_ids)
            if n > best_len:
                best, best_len = other, n
        if best is None or best_len - have < MIN_SHARED_PREFIX:
            return have
        kv.copy_prefix_from(best, best_len)
        self.stats.shared_prefix_tokens += best_len - have
        return best_len

    def enforce(self, busy: set[int]) -> None:
        """Evict least recently used caches (not those whose id is in `busy`) until within budget."""
        used = self.used_bytes()
        if used <= self.budget_bytes:
            return
        idle = sorted((kv for kv in list(self._caches) if id(kv) not in busy), key=lambda kv: kv.last_used)
        for kv in idle:
            if used <= self.budget_bytes:
                break
            before = kv.nbytes
            if self.mode == "compress" and kv.resident and kv.length > 0:
                kv.compress()
            else:
                kv.drop()  # a compressed cache that still does not fit is dropped too
            used -= before - kv.nbytes
            self.stats.evictions += 1


def _round_up(n: int) -> int:
    return max(GROWTH, (n + GROWTH - 1) // GROWTH * GROWTH)
