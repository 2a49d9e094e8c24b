"""Weight formats: how each projection of the lean forward stores its weight and multiplies by it.

A decode step multiplies a few dozen rows by every weight of the model, so at small batch
sizes its cost is reading the weights; fewer bytes per weight is the lever. The modes
(`--weights`, LLMOS_WEIGHTS):

  fp32  fp32 weights packed once into oneDNN's blocked layout (default; exact, batch-invariant)
  bf16  bfloat16 weights and activations: oneDNN-packed where the CPU has AVX512-BF16 or AMX,
        plain `F.linear` otherwise (slow on AVX2-only CPUs, which convert in software); on GPUs
  int8  weight-only int8, one scale per output channel (torch's `_weight_int8pack_mm`), bf16
        activations
  int4  weight-only int4 in groups of 32 along the input with a scale and a minimum each
        (the scheme of GGUF's Q4_1, so the default model's weights come back nearly exactly),
        torch's `_weight_int4pack_mm_for_cpu`, bf16 activations
  w8a8  int8 weights, and activations quantized to int8 on the fly with one scale for the
        whole batch (fbgemm's dynamic linear), fp32 elsewhere: the fastest on x86 CPUs, but a
        row's result depends on the other rows of its batch, so it is not batch-invariant

Every format offers `y = layer(x)` and `y = layer.add(x, residual)` (x W^T + b + residual; the
fp32 kernel fuses the residual add into the matmul).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from llmos.config import WEIGHT_MODES
CPU_ONLY = ("int8", "int4", "w8a8")
COMPUTE_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16, "int4": torch.bfloat16, "w8a8": torch.float32}
INT4_GROUP = 32


def compute_dtype(mode: str) -> torch.dtype:
    """The dtype of activations and of the KV cache in a weight mode."""
    return COMPUTE_DTYPE[check_mode(mode)]


def check_mode(mode: str, device: torch.device | str = "cpu") -> str:
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weight mode {mode!r}; choose one of {', '.join(WEIGHT_MODES)}")
    if mode in CPU_ONLY and torch.device(device).type != "cpu":
        raise ValueError(f"--weights {mode} uses CPU kernels; on {device} use fp32 or bf16")
    return mode


class Linear:
    """Plain `F.linear`: GPUs, and the fallback where no faster format applies."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight.detach()
        self.bias = bias.detach() if bias is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self(x).add_(residual)


class PackedLinear(Linear):
    """y = x W^T + b with W packed once, at load, into oneDNN's blocked layout for this CPU.
    Unpacked, oneDNN repacks the weight on every call, which is most of the cost at small
    batch sizes (measured ~1.7x on the projections and ~3x on the vocabulary head at 32 rows)."""

    PACK_FOR_ROWS = 32  # the batch size the blocking is tuned for

    def __init__(self, packed: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.packed = packed
        self.bias = bias

    @classmethod
    def make(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
        """The packed form where this CPU's oneDNN supports it and agrees with `F.linear`."""
        weight = weight.detach()
        bias = bias.detach() if bias is not None else None
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, cls.PACK_FOR_ROWS)
            layer = cls(packed, bias)
            probe = torch.randn(3, weight.shape[1], dtype=weight.dtype)
            if torch.allclose(layer(probe).float(), F.linear(probe, weight, bias).float(), rtol=2e-2, atol=2e-2):
                return layer
        except (RuntimeError, AttributeError):
            pass
        return Linear(weight, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # The sum is oneDNN's post-op: bit for bit the matmul then the add, one call fewer.
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")


class Int8Linear(Linear):
    """Weight-only int8: W ~ q * scale, one scale per output channel (symmetric)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        self.q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(dtype)
        self.bias = bias.detach().to(dtype) if bias is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale)
        return y.add_(self.bias) if self.bias is not None else y

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` of W (dequantized): a tied embedding reads its vectors from here."""
        return (self.q[ids].to(torch.float32) * self.scale[ids, None].float()).to(dtype)


class Int4Linear(Linear):
    """Weight-only int4: groups of INT4_GROUP inputs, each with a scale and a minimum,
    W ~ q * scale + min with q in 0..15 (torch stores it as (q - 8) * scale + zero)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        w = weight.detach().float()
        out_features, in_features = w.shape
        if in_features % INT4_GROUP:
            raise ValueError(f"int4 needs input sizes divisible by {INT4_GROUP}, got {in_features}")
        groups = w.view(out_features, in_features // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(out_features, in_features), 1)
        zero = low + 8 * scale
        self.scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(dtype)
        self.bias = bias.detach().to(dtype) if bias is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, INT4_GROUP, self.scales_and_zeros)
        return y.add_(self.bias) if self.bias is not None else y


class DynamicInt8Linear(Linear):
    """int8 weights (per output channel) times activations quantized per call (fbgemm)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated, but fbgemm's kernels are the fast ones here
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias.detach().float() if bias is not None else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, so AVX2's 16-bit intermediate sums cannot saturate.
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, mode: str, device: torch.device) -> Linear:
    """`weight` [out, in] (and `bias`) in format `mode`, on `device`."""
    dtype = COMPUTE_DTYPE[mode]
    if device.type != "cpu":
        return Linear(weight.detach().to(device, dtype), bias.detach().to(device, dtype) if bias is not None else None)
    if mode in ("fp32", "bf16"):
        return PackedLinear.make(weight.detach().to(dtype), bias.detach().to(dtype) if bias is not None else None)
    if mode == "int8":
        return Int8Linear(weight, bias, dtype)
    if mode == "int4":
        return Int4Linear(weight, bias, dtype)
    return DynamicInt8Linear(weight, bias)
