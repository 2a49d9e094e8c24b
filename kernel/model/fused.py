"""RMSNorm, rotary embedding and SiLU(gate) * up for the lean forward (llama.py): fused.c's
one call each on the CPU in fp32 where our kernels build (native.py), torch's ops otherwise
(GPUs, bf16, no compiler); and `DecodeStack`, layer.c's whole decode step in one call."""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F

from llmos.kernel.model import matmul, native
from llmos.kernel.model.attention import DecodeBatch
from llmos.kernel.model.linear import PanelLinear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [N, dim] (rows may be strided) -> x / rms(x) * weight, as transformers' LlamaRMSNorm."""
    rows, dim = x.shape
    if not native.serves(x) or x.stride(1) != 1:
        return F.rms_norm(x, (dim,), weight, eps)
    out = torch.empty(rows, dim)
    native.library().llmos_rms_norm(x.data_ptr(), x.stride(0), weight.data_ptr(), rows, dim, eps, out.data_ptr())  # type: ignore[union-attr]
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [N, 2 * width] -> silu(gate) * up, [N, width]."""
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    if not native.serves(gate_up) or gate_up.stride(1) != 1:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)
    out = torch.empty(rows, width)
    native.library().llmos_silu_mul(gate_up.data_ptr(), gate_up.stride(0), rows, width, out.data_ptr())  # type: ignore[union-attr]
    return out


class Rotary:
    """Rotary embedding at one forward's positions, applied in place to the q and k heads at
    the front of each projection row. cos/sin: [position, dim] tables with rotate_half's sign
    folded into sin (llama.py makes them)."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> None:
        self.native = native.serves(cos)
        if self.native:
            self.cos, self.sin, self.positions = cos, sin, positions.to(torch.int64).contiguous()
        else:  # gathered once for every layer: [N, 1, dim], broadcast over heads
            self.cos, self.sin = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)

    def apply(self, rows: torch.Tensor, heads: int, dim: int) -> None:
        """rows [N, >= heads * dim]: its first `heads` heads rotated in place."""
        n = rows.shape[0]
        if self.native and rows.stride(1) == 1:
            native.library().llmos_rotary(  # type: ignore[union-attr]
                rows.data_ptr(), rows.stride(0), n, heads, dim, self.cos.data_ptr(), self.sin.data_ptr(), self.positions.data_ptr()
            )
            return
        cos, sin = (self.cos, self.sin) if not self.native else (self.cos[self.positions].unsqueeze(1), self.sin[self.positions].unsqueeze(1))
        qk = rows[:, : heads * dim].view(n, heads, dim)
        rotated = qk.view(n, heads, 2, dim // 2).flip(2).view(n, heads, dim).mul_(sin)
        qk.mul_(cos).add_(rotated)  # x * cos + rotate_half(x) * sin, as transformers computes it


class _Projection(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("weight", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("out_features", ctypes.c_int), ("in_features", ctypes.c_int)]


class _Layer(ctypes.Structure):
    _fields_ = [("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p),
                ("qkv", _Projection), ("o", _Projection), ("gate_up", _Projection), ("down", _Projection)]


class _Shape(ctypes.Structure):
    _fields_ = [("hidden", ctypes.c_int), ("q_heads", ctypes.c_int), ("kv_heads", ctypes.c_int), ("dim", ctypes.c_int),
                ("intermediate", ctypes.c_int), ("eps", ctypes.c_float), ("attention_scale", ctypes.c_float),
                ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p)]


def _projection(layer: PanelLinear) -> _Projection:
    w = layer.panels
    return _Projection(
        matmul.W_CODES[w.panels.dtype], w.panels.data_ptr(), w.scale.data_ptr() if w.scale is not None else None,
        layer.bias.data_ptr() if layer.bias is not None else None, w.out_features, w.in_features,
    )


class DecodeStack:
    """layer.c: every layer of a step whose rows are all seated decoders, in one call. It holds
    pointers into the runner's tensors, which live as long as the runner does."""

    def __init__(self, runner: Any) -> None:
        layers = runner.layers
        self.shape = _Shape(
            runner.hidden, runner.q_heads, runner.kv_heads, runner.head_dim, layers[0].down.panels.in_features,
            runner.eps, runner.scale, runner.cos.data_ptr(), runner.sin.data_ptr(),
        )
        self.layers = (_Layer * len(layers))(*[
            _Layer(layer.input_norm.data_ptr(), layer.post_norm.data_ptr(), _projection(layer.qkv), _projection(layer.o),
                   _projection(layer.gate_up), _projection(layer.down))
            for layer in layers
        ])

    @staticmethod
    def fits(runner: Any) -> bool:
        """Whether layer.c can run this runner's layers: fp32 on the CPU, our kernels built, every
        projection in panels, heads a multiple of 8 wide."""
        projections = [p for layer in runner.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return (
            native.serves(runner.cos) and runner.head_dim % 8 == 0
            and all(isinstance(p, PanelLinear) for p in projections)
        )

    def run(self, x: torch.Tensor, positions: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
        """x [B, hidden] (updated in place and returned) through every layer; row b is batch's
        decoder b at positions[b]."""
        data = batch.slab.data  # [layer, 2, seat, kv_head, position, dim]
        positions = positions.to(torch.int64).contiguous()
        status = native.library().llmos_decode_layers(  # type: ignore[union-attr]
            ctypes.byref(self.shape), self.layers, len(self.layers), x.data_ptr(), x.shape[0], positions.data_ptr(),
            data.data_ptr(), data.stride(0), data.stride(1), data.stride(2), data.stride(3), data.stride(4),
            batch.slots.data_ptr(), batch.lengths.data_ptr(),
        )
        if status != 0:
            raise MemoryError("decode step: out of memory for the layers' scratch buffers")
        return x
