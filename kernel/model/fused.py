"""RMSNorm, rotary embedding and SiLU(gate) * up for the lean forward (llama.py): fused.c's
one call each on the CPU in fp32 where our kernels build (native.py), torch's ops otherwise
(GPUs, bf16, no compiler)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmos.kernel.model import native


def native_for(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu" and native.available()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [N, dim] (rows may be strided) -> x / rms(x) * weight, as transformers' LlamaRMSNorm."""
    rows, dim = x.shape
    if not native_for(x) or x.stride(1) != 1:
        return F.rms_norm(x, (dim,), weight, eps)
    out = torch.empty(rows, dim)
    native.library().llmos_rms_norm(x.data_ptr(), x.stride(0), weight.data_ptr(), rows, dim, eps, out.data_ptr())  # type: ignore[union-attr]
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [N, 2 * width] -> silu(gate) * up, [N, width]."""
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    if not native_for(gate_up) or gate_up.stride(1) != 1:
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
        self.native = native_for(cos)
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
