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
    Returns [N, q_heads, dim]."""
    q_heads, kv_heads = q.shape[1], k.shape[1]
    rep = q_heads // kv_heads
    outputs = []
    offset = 0
    for seg in segments:
        end = seg.start + seg.n
        buf = seg.kv.buf[layer]
        buf[0, :, seg.start : end] = k[offset : offset + seg.n].transpose(0, 1)
        buf[1, :, seg.start : end] = v[offset : offset + seg.n].transpose(0, 1)
        keys, values = buf[0, :, :end], buf[1, :, :end]  # [kv_heads, end, dim], in place
        if seg.n == 1:
            # A single query attends to everything stored: group the query heads that share a
            # KV head, so no key is repeated and no mask is needed.
            qg = q[offset].reshape(kv_heads, rep, -1)
            out = F.scaled_dot_product_attention(qg, keys, values, scale=scale).reshape(1, q_heads, -1)
        else:
            qs = q[offset : offset + seg.n].transpose(0, 1)  # [q_heads, n, dim]
            if rep > 1:
                keys = keys.repeat_interleave(rep, dim=0)
                values = values.repeat_interleave(rep, dim=0)
            if seg.start == 0:
                out = F.scaled_dot_product_attention(qs, keys, values, is_causal=True, scale=scale)
            else:
                # Query i sits at position start+i and may see every position up to it.
                rows = torch.arange(seg.n).unsqueeze(1) + seg.start
                mask = torch.arange(end).unsqueeze(0) <= rows
                out = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask, scale=scale)
            out = out.transpose(0, 1)
        outputs.append(out)
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
