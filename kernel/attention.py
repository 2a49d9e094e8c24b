"""Variable-length attention over per-process KV caches.

One forward pass carries a flat run of tokens from many processes: one token per decoding
process plus a chunk of prompt for a process that is prefilling (vLLM's packed layout). The
projections and MLP see every token in one matmul; attention alone is split per segment, each
attending to its own `SequenceKV` in place. Because no sequence is padded or masked against its
neighbours, a process's attention is computed exactly as it would be alone.

transformers lets a model use a registered attention function by name; we register ours as
"llmos" and install the current step's segments in a thread-local before each forward.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmos.kernel.kvcache import SequenceKV

ATTN_NAME = "llmos"


@dataclass
class Segment:
    """`n` consecutive tokens of the flat batch that extend `kv` from position `start`."""

    kv: SequenceKV
    start: int
    n: int
    window: torch.Tensor | None = None  # kv.buf[..., :start + n, :], made once per step

    def cache(self, layer: int) -> torch.Tensor:
        """[2 (key, value), kv_heads, start + n, dim] of one layer: a view of the cache."""
        if self.window is None:
            self.window = self.kv.buf[:, :, :, : self.start + self.n]
        return self.window[layer]


_current = threading.local()


class StepContext:
    """Installs the segments of one forward pass for the attention function to read."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments

    def __enter__(self) -> "StepContext":
        _current.segments = self.segments
        return self

    def __exit__(self, *exc: object) -> None:
        _current.segments = None


def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: list[Segment], scale: float) -> torch.Tensor:
    """Store the new keys/values of every segment in its cache and attend each segment's
    queries to its own cache. q: [N, q_heads, dim]; k, v: [N, kv_heads, dim] (rotary applied).
    Returns [N, q_heads, dim].

    This loop runs segments x layers times a step, so it keeps its tensor operations few."""
    n_tokens, q_heads, dim = q.shape
    kv_heads = k.shape[1]
    rep = q_heads // kv_heads
    new_kv = torch.stack((k, v), dim=2)  # [N, kv_heads, 2, dim]: one copy per segment below
    grouped = q.view(n_tokens, kv_heads, rep, dim)  # query heads grouped by the KV head they share
    outputs = []
    offset = 0
    for seg in segments:
        cache = seg.cache(layer)
        end = seg.start + seg.n
        cache[:, :, seg.start : end] = new_kv[offset : offset + seg.n].permute(2, 1, 0, 3)
        # Keys and values as [1, kv_heads, end, dim] views, in place. (4-D: torch's fused CPU
        # attention kernel only takes batched inputs; 3-D ones take the slow reference path.)
        keys, values = cache[0:1], cache[1:2]
        if seg.n == 1:
            # A single query attends to everything stored: its grouped heads need no repeated
            # keys and no mask.
            out = F.scaled_dot_product_attention(grouped[offset : offset + 1], keys, values, scale=scale)
            outputs.append(out.view(1, q_heads, dim))
        else:
            qs = q[offset : offset + seg.n].transpose(0, 1).unsqueeze(0)  # [1, q_heads, n, dim]
            if rep > 1:
                keys = keys.repeat_interleave(rep, dim=1)
                values = values.repeat_interleave(rep, dim=1)
            if seg.start == 0:
                out = F.scaled_dot_product_attention(qs, keys, values, is_causal=True, scale=scale)
            else:
                # Query i sits at position start+i and may see every position up to it.
                rows = torch.arange(seg.n).unsqueeze(1) + seg.start
                mask = torch.arange(end).unsqueeze(0) <= rows
                out = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask, scale=scale)
            outputs.append(out[0].transpose(0, 1))
        offset += seg.n
    return torch.cat(outputs, dim=0)


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, q_heads, N, dim]
    key: torch.Tensor,  # [1, kv_heads, N, dim], new tokens only (rotary applied)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """`attend` behind transformers' attention interface, for models without a lean runner."""
    segments: list[Segment] | None = getattr(_current, "segments", None)
    if segments is None:
        raise RuntimeError("llmos attention called outside a StepContext")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = attend(module.layer_idx, query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), segments, scale)
    return out.unsqueeze(0), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, varlen_attention)
