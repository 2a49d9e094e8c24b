"""Projections by matmul.c (it says why and how): weights packed into its panels, and the call.
`available()` is False where our kernels cannot be built (native.py); linear.py then keeps
torch's kernels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmos.kernel.model import native

TILE_PANELS = 4  # panels in matmul.c's widest tile: weights are padded to a multiple of that
W_CODES = {torch.float32: 0, torch.float16: 1, torch.int8: 2}


def available() -> bool:
    return native.available()


def panel_width() -> int:
    """Outputs per panel: a vector register's fp32 lanes where the kernels were built (8 with
    AVX2, 16 with AVX-512)."""
    lib = native.library()
    assert lib is not None, "our kernels are not available here (native.py)"
    return lib.llmos_panel_width()


@dataclass
class PanelWeight:
    """A weight [N, K] stored as panels [ceil32(N)/P, K, P] in fp32 or fp16, or int8 with input
    channels in pairs, [ceil32(N)/P, ceil2(K)/2, P, 2], and one fp32 scale per output
    (W ~ q * scale): matmul.c multiplies int8 pairs by int16 pairs. P: `panel_width()`."""

    panels: torch.Tensor
    scale: torch.Tensor | None
    out_features: int
    in_features: int


def int8_scales(weight: torch.Tensor) -> torch.Tensor:
    """One scale per output of `weight` [N, K] for symmetric int8: its largest magnitude / 127."""
    return (weight.detach().float().abs().amax(dim=1) / 127).clamp(min=1e-12)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` [N, K] as integers in [-127, 127] (still fp32) and one scale per output:
    weight ~ q * scale (symmetric, per output channel)."""
    w = weight.detach().float()
    scale = int8_scales(w)
    return torch.round(w / scale[:, None]).clamp(-127, 127), scale


def pack(weight: torch.Tensor, dtype: torch.dtype) -> PanelWeight:
    """`weight` [N, K] as panels of `dtype` (fp32, fp16, or int8 symmetric per output)."""
    w = weight.detach().float()
    n, k = w.shape
    scale = None
    if dtype == torch.int8:
        w, scale = quantize_int8(w)
    pairs, width = dtype == torch.int8, panel_width()
    tile = TILE_PANELS * width
    padded = torch.zeros((n + tile - 1) // tile * tile, k + (k % 2 if pairs else 0))
    padded[:n, :k] = w
    if pairs:  # [panel, output, pair, 2] -> [panel, pair, output, 2]
        panels = padded.view(-1, width, padded.shape[1] // 2, 2).transpose(1, 2).to(dtype).contiguous()
    else:
        panels = padded.view(-1, width, k).transpose(1, 2).to(dtype).contiguous()
    return PanelWeight(panels, scale.contiguous() if scale is not None else None, n, k)


def rows(weight: PanelWeight, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of the fp32 weight the panels hold (dequantized): a tied embedding's vectors."""
    width = weight.panels.shape[2]
    panel, within = ids // width, ids % width
    w = weight.panels[panel, :, within].float()  # [len(ids), K] or [len(ids), K'/2, 2]
    w = w.reshape(len(ids), -1)[:, : weight.in_features]
    return w * weight.scale[ids, None] if weight.scale is not None else w


def unpack(weight: PanelWeight) -> torch.Tensor:
    """The fp32 weight [N, K] the panels hold (dequantized): tests."""
    return rows(weight, torch.arange(weight.out_features))


def matmul(
    x: torch.Tensor, weight: PanelWeight, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] fp32 -> x W^T (* scale) + bias + residual, [M, N] fp32."""
    lib = native.library()
    assert lib is not None, "our kernels are not available here (native.py)"
    if x.dtype != torch.float32 or x.stride(-1) != 1:
        x = x.float().contiguous()
    if residual is not None and not residual.is_contiguous():
        residual = residual.contiguous()
    if x.dim() != 2 or x.shape[1] != weight.in_features:
        raise ValueError(f"matmul: x is {tuple(x.shape)}, the weight takes {weight.in_features} inputs")
    m = x.shape[0]
    y = torch.empty(m, weight.out_features)
    if m and lib.llmos_matmul(
            W_CODES[weight.panels.dtype], weight.panels.data_ptr(),
            weight.scale.data_ptr() if weight.scale is not None else None,
            weight.out_features, weight.in_features, x.data_ptr(), x.stride(0), m, y.data_ptr(),
            bias.data_ptr() if bias is not None else None,
            residual.data_ptr() if residual is not None else None,
    ):
        raise MemoryError("matmul: out of memory for the quantized rows")
    return y


@dataclass
class HeadScreen:
    """An fp32 head's path for rows that only need their argmax (greedy decoding): matmul.c's
    llmos_head_argmax screens every output with an fp16 copy of the weight (half the bytes)
    and sums again, exactly as the fp32 panels would, every output that could be the largest.
    err[j] bounds |fp16 sum - fp32 sum| of output j per unit of |x|_1."""

    screen: PanelWeight
    exact: PanelWeight
    err: torch.Tensor

    @classmethod
    def of(cls, exact: PanelWeight) -> "HeadScreen":
        w = unpack(exact)
        w16 = w.half()
        # The weights' own rounding to fp16 (w - w16 is exact in fp32), and a sum of K fused
        # multiply-adds, one rounding each, is off by at most K u sum|w x| (to first order; the
        # 1.01 covers the rest and the float arithmetic here): twice, for the two sums compared.
        rounded = (w - w16.float()).abs().amax(dim=1)
        u, k = 2.0**-24, exact.in_features
        largest = torch.maximum(w.abs().amax(dim=1), w16.float().abs().amax(dim=1))
        err = (rounded + 2 * k * u * largest) * 1.01
        return cls(pack(w, torch.float16), exact, err.contiguous())

    def argmax_logits(self, x: torch.Tensor, banned: tuple[int, ...] = ()) -> torch.Tensor:
        """x [M, K] fp32 -> [M, N]: the fp32 head's logits where they could be a row's largest
        among the outputs not `banned`, -inf elsewhere (so a row's argmax is what the fp32 head's
        would be with the banned ones at -inf, ties to the first)."""
        lib = native.library()
        assert lib is not None, "our kernels are not available here (native.py)"
        x = x.float().contiguous()
        y = torch.empty(x.shape[0], self.exact.out_features)
        ban = torch.tensor(sorted(b for b in banned if 0 <= b < self.exact.out_features), dtype=torch.int32)
        if x.shape[0] and lib.llmos_head_argmax(
                self.screen.panels.data_ptr(), self.exact.panels.data_ptr(), self.err.data_ptr(),
                self.exact.out_features, self.exact.in_features, x.data_ptr(), x.stride(0), x.shape[0],
                ban.data_ptr() if len(ban) else None, len(ban), y.data_ptr()):
            raise MemoryError("head_argmax: out of memory")
        return y
