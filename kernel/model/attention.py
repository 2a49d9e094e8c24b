"""Variable-length attention over per-process KV caches.

One forward pass carries a flat run of tokens from many processes: one token per decoding
process plus a chunk of prompt for a process that is prefilling (vLLM's packed layout). The
projections and MLP see every token in one matmul. Attention is where sequences differ:
  - decoders seated in the `DecodeSlab` are attended together, one call per layer, each seat
    masked to its own stored positions (`DecodeBatch`);
  - everything else (prompt chunks; a context longer than the slab takes, or so much longer
    than the others that batching it would make every seat read that far) is attended per
    segment, each against its own `SequenceKV` in place.
Masked positions contribute exact zeros, so a process's attention is computed as it would be
alone. Single-token queries in fp32 (every decode row, seated or not) go to attention.c where
it can be built (native.py): it reads each row's cache to that row's own length, where torch's
fused kernel spends most of a decode step's attention in setup; a decode row then takes the
same arithmetic whichever path it is on.

transformers lets a model use a registered attention function by name; we register ours as
"llmos" and install the current step's segments in a thread-local before each forward.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmos.kernel.model import native
from llmos.kernel.model.kvcache import DecodeSlab, SequenceKV

ATTN_NAME = "llmos"


@dataclass
class Segment:
    """`n` consecutive tokens of the flat batch, from `row` on, that extend `kv` from position
    `start`."""

    kv: SequenceKV
    start: int
    n: int
    row: int = 0
    window: torch.Tensor | None = None  # kv.buf[..., :start + n, :], made once per step
    mask: torch.Tensor | None = None  # [n, start + n] which stored positions each query sees, made once per step

    def cache(self, layer: int) -> torch.Tensor:
        """[2 (key, value), kv_heads, start + n, dim] of one layer: a view of the cache."""
        if self.window is None:
            self.window = self.kv.buf[:, :, :, : self.start + self.n]
        return self.window[layer]


@dataclass
class DecodeBatch:
    """The decoding sequences of a step, one token each, seated in the slab and laid first in
    the flat batch (rows 0..B-1, in slot order). Each layer stores their keys/values with one
    indexed copy and attends them with one call over seats 0..S-1; seats in that range that
    belong to no decoder of this step see only position 0, and their output is discarded."""

    slab: DecodeSlab
    slots: torch.Tensor  # [B] seat of row b
    targets: torch.Tensor | None  # [B * kv_heads] where row b's head h is stored in a layer's flat view (torch's kernel only)
    lengths: torch.Tensor  # [B] int32: positions row b sees (its own included)
    mask: torch.Tensor | None  # [S, 1, 1, L]: 0 where a seat's query may see a position, -inf elsewhere (torch's kernel only)
    dense: bool  # slots are exactly 0..B-1: no scatter or gather needed

    @classmethod
    def build(cls, slab: DecodeSlab, slots: list[int], positions: list[int]) -> "DecodeBatch":
        seats = max(slots) + 1
        device = slab.data.device
        slot_ids, written = torch.tensor(slots), torch.tensor(positions)
        lengths = (written + 1).to(torch.int32)
        if _native_decode(slab.data):
            # attention.c stores each row's key and value and reads its seat to its own length:
            # no mask, no scatter targets, nothing unwritten is read (no `finite`).
            return cls(slab, slot_ids, None, lengths, None, dense=seats == len(slots))
        length = max(positions) + 1
        slab.finite(seats, length)
        visible = torch.zeros(seats, dtype=torch.long)  # unused seats: position 0 only, never NaN
        visible[slot_ids] = written
        hidden = (torch.arange(length).unsqueeze(0) > visible.unsqueeze(1)).view(seats, 1, 1, length)
        # Additive, made once per step: a boolean mask is turned into this in every layer's call.
        mask = torch.zeros(hidden.shape, dtype=slab.data.dtype).masked_fill_(hidden, float("-inf")).to(device)
        # A layer's slab [2, slot, head, position, dim] seen as [2, slot * head * position, dim]:
        # row b's head h goes to (slot_b * heads + h) * capacity + position_b.
        heads, capacity = slab.shape.kv_heads, slab.capacity
        base = slot_ids.unsqueeze(1) * heads + torch.arange(heads).unsqueeze(0)
        targets = (base * capacity + written.unsqueeze(1)).view(-1)
        return cls(slab, slot_ids.to(device), targets.to(device), lengths, mask, dense=seats == len(slots))

    @property
    def size(self) -> int:
        return self.slots.shape[0]

    def attend(self, layer: int, grouped: torch.Tensor, new_kv: torch.Tensor, scale: float) -> torch.Tensor:
        """grouped: [B, kv_heads, rep, dim] queries; new_kv: [B, 2, kvh, dim] (a view of the
        projection's output). Returns [B, kv_heads, rep, dim]."""
        data = self.slab.data[layer]  # [2, slot, kv_heads, position, dim]
        batch, _, heads, dim = new_kv.shape
        assert self.targets is not None and self.mask is not None  # attention.c's rows go through `attend`
        data.view(2, -1, dim).index_copy_(1, self.targets, new_kv.transpose(0, 1).reshape(2, batch * heads, dim))
        seats, length = self.mask.shape[0], self.mask.shape[-1]
        keys, values = data[0, :seats, :, :length], data[1, :seats, :, :length]
        if self.dense:
            return F.scaled_dot_product_attention(grouped, keys, values, attn_mask=self.mask, scale=scale)
        queries = grouped.new_zeros(seats, *grouped.shape[1:])
        queries[self.slots] = grouped
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=self.mask, scale=scale)
        return out[self.slots]


_current = threading.local()


class StepContext:
    """Installs the work of one forward pass for the attention function to read."""

    def __init__(self, segments: list[Segment], batch: DecodeBatch | None = None) -> None:
        self.segments = segments
        self.batch = batch

    def __enter__(self) -> "StepContext":
        _current.step = self
        return self

    def __exit__(self, *exc: object) -> None:
        _current.step = None


def attend(
    layer: int,
    q: torch.Tensor,
    kv: torch.Tensor,
    segments: list[Segment],
    scale: float,
    batch: DecodeBatch | None = None,
) -> torch.Tensor:
    """Store the new keys/values of every token in its cache and attend each token's query to
    its own cache. q: [N, q_heads, dim]; kv: [N, 2 (key, value), kv_heads, dim] (rotary applied).
    The first `batch.size` rows are the seated decoders; `segments` are the rest. Returns
    [N, q_heads, dim].

    This runs once per layer; the per-segment loop runs segments x layers times a step, so it
    keeps its tensor operations few."""
    n_tokens, q_heads, dim = q.shape
    kv_heads = kv.shape[2]
    grouped = q.view(n_tokens, kv_heads, q_heads // kv_heads, dim)  # query heads grouped by the KV head they share
    if batch is not None:
        decoded = batch.size
        if batch.mask is None:  # attention.c stores and attends
            data = batch.slab.data[layer]
            out = decode_attention(q[:decoded], kv[:decoded], data[0], data[1], batch.slots, batch.lengths, scale)
        else:
            out = batch.attend(layer, grouped[:decoded], kv[:decoded], scale).view(decoded, q_heads, dim)
        if not segments:
            return out
        outputs = [out]
    else:
        outputs = []
    for seg in segments:
        outputs.append(_attend_segment(layer, seg, q, grouped, kv, scale))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)


def _attend_segment(
    layer: int, seg: Segment, q: torch.Tensor, grouped: torch.Tensor, new_kv: torch.Tensor, scale: float
) -> torch.Tensor:
    n_tokens, q_heads, dim = q.shape
    rows = slice(seg.row, seg.row + seg.n)
    cache = seg.cache(layer)
    end = seg.start + seg.n
    if seg.n == 1 and _native_decode(cache):  # attention.c stores and attends
        return decode_attention(q[rows], new_kv[rows], cache[0:1], cache[1:2], _SEAT_ZERO, torch.tensor([end], dtype=torch.int32), scale)
    cache[:, :, seg.start : end] = new_kv[rows].permute(1, 2, 0, 3)
    # Keys and values as [1, kv_heads, end, dim] views, in place. (4-D: torch's fused CPU
    # attention kernel only takes batched inputs; 3-D ones take the slow reference path.)
    keys, values = cache[0:1], cache[1:2]
    if seg.n == 1:
        # A single query attends to everything stored: its grouped heads need no repeated
        # keys and no mask.
        out = F.scaled_dot_product_attention(grouped[rows], keys, values, scale=scale)
        return out.view(1, q_heads, dim)
    qs = q[rows].transpose(0, 1).unsqueeze(0)  # [1, q_heads, n, dim]
    if seg.start == 0:
        out = F.scaled_dot_product_attention(qs, keys, values, is_causal=True, scale=scale, enable_gqa=True)
    else:
        if seg.mask is None:  # query i sits at position start+i and may see every position up to it
            positions = torch.arange(end, device=q.device)
            seg.mask = positions.unsqueeze(0) <= positions[seg.start :].unsqueeze(1)
        out = F.scaled_dot_product_attention(qs, keys, values, attn_mask=seg.mask, scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)


_SEAT_ZERO = torch.zeros(1, dtype=torch.long)


def _native_decode(cache: torch.Tensor) -> bool:
    """Whether decode rows over this cache go to attention.c: our kernels serve it, and heads
    are a multiple of 8 wide."""
    return cache.shape[-1] % 8 == 0 and native.serves(cache)


def decode_attention(
    q: torch.Tensor,
    new_kv: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    seats: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """attention.c: row b's key and value (new_kv [B, 2, kv_heads, dim]) are stored at position
    lengths[b] - 1 of seat seats[b] in keys/values [S, kv_heads, P, dim], then its queries
    q [B, q_heads, dim] attend to that seat's first lengths[b] positions. Rows of q and new_kv
    may be strided (views of the projection's output), the rest of each must be dense; the
    caches' strides are free but for dim. Returns [B, q_heads, dim]."""
    rows, q_heads, dim = q.shape
    kv_heads = new_kv.shape[2]
    assert q.stride()[1:] == (dim, 1) and new_kv.stride()[1:] == (kv_heads * dim, dim, 1)
    assert keys.stride() == values.stride() and keys.stride(-1) == 1 and keys.dtype == q.dtype == torch.float32
    out = torch.empty(rows, q_heads, dim)
    native.library().llmos_decode_attention(  # type: ignore[union-attr]
        q.data_ptr(), q.stride(0), new_kv.data_ptr(), new_kv.stride(0), keys.data_ptr(), values.data_ptr(),
        keys.stride(0), keys.stride(1), keys.stride(2), seats.data_ptr(), lengths.data_ptr(),
        rows, q_heads, kv_heads, dim, scale, out.data_ptr(),
    )
    return out


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
    step: StepContext | None = getattr(_current, "step", None)
    if step is None:
        raise RuntimeError("llmos attention called outside a StepContext")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = attend(module.layer_idx, q, torch.stack((k, v), dim=1), step.segments, scale, step.batch)
    return out.unsqueeze(0), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, varlen_attention)
