"""Per-process KV cache and the global budget that bounds all of them.

Each process owns one `SequenceKV`: the keys and values of every layer for the tokens of its
context, kept between time slices so that a preempted or blocked process resumes without
prefilling again. The batched forward pass writes new keys/values straight into these buffers
and attends over them in place (see `attention.py`), so joining or leaving the running batch
costs no copy at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROWTH = 256  # tokens; buffers grow in steps so that decoding does not reallocate every token


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
        self.buf = torch.empty(
            shape.layers, 2, shape.kv_heads, _round_up(capacity), shape.head_dim, dtype=shape.dtype
        )
        self.token_ids: list[int] = []  # tokens whose keys/values are stored, position by position

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def capacity(self) -> int:
        return self.buf.shape[3]

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def reserve(self, total_tokens: int) -> None:
        """Make room for `total_tokens` positions, keeping what is stored."""
        if total_tokens <= self.capacity:
            return
        new_cap = max(_round_up(total_tokens), self.capacity * 2)
        grown = torch.empty(
            self.shape.layers, 2, self.shape.kv_heads, new_cap, self.shape.head_dim, dtype=self.shape.dtype
        )
        grown[:, :, :, : self.length] = self.buf[:, :, :, : self.length]
        self.buf = grown

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (their tokens changed, or the cache was evicted)."""
        del self.token_ids[length:]

    def common_prefix(self, token_ids: list[int]) -> int:
        """How many leading positions of `token_ids` are already stored and can be reused."""
        n = min(len(token_ids), self.length)
        stored = self.token_ids
        i = 0
        while i < n and stored[i] == token_ids[i]:
            i += 1
        return i

    def copy_prefix_from(self, other: "SequenceKV", length: int) -> None:
        """Take the first `length` positions from another cache (shared system prompt)."""
        self.reserve(length)
        self.buf[:, :, :, :length] = other.buf[:, :, :, :length]
        self.token_ids = list(other.token_ids[:length])

    def shrink(self) -> None:
        """Give back memory beyond what the stored tokens need."""
        want = _round_up(max(self.length, 1))
        if want < self.capacity:
            self.buf = self.buf[:, :, :, :want].clone()


def _round_up(n: int) -> int:
    return max(GROWTH, (n + GROWTH - 1) // GROWTH * GROWTH)
