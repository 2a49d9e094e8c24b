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
    segments: list[Segment] | None = getattr(_current, "segments", None)
    if segments is None:
        raise RuntimeError("llmos attention called outside a StepContext")
    layer = module.layer_idx
    q_heads, kv_heads = query.shape[1], key.shape[1]
    rep = q_heads // kv_heads
    outputs = []
    offset = 0
    for seg in segments:
        end = seg.start + seg.n
        buf = seg.kv.buf[layer]
        buf[0, :, seg.start : end] = key[0, :, offset : offset + seg.n]
        buf[1, :, seg.start : end] = value[0, :, offset : offset + seg.n]
        keys = buf[0, :, :end].unsqueeze(0)
        values = buf[1, :, :end].unsqueeze(0)
        q = query[:, :, offset : offset + seg.n]
        if seg.n == 1:
            # A single query attends to everything stored: group the query heads that share a
            # KV head, so no key is repeated and no mask is needed.
            q = q.reshape(1, kv_heads, rep, q.shape[-1])
            out = F.scaled_dot_product_attention(q, keys, values, scale=scaling)
            out = out.reshape(1, q_heads, 1, -1)
        else:
            if rep > 1:
                keys = keys.repeat_interleave(rep, dim=1)
                values = values.repeat_interleave(rep, dim=1)
            if seg.start == 0:
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=scaling)
            else:
                # Query i sits at position start+i and may see every position up to it.
                rows = torch.arange(seg.n).unsqueeze(1) + seg.start
                mask = torch.arange(end).unsqueeze(0) <= rows
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scaling)
        outputs.append(out.transpose(1, 2))
        offset += seg.n
    return torch.cat(outputs, dim=1), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, varlen_attention)
