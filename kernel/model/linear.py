"""Weight formats: how each projection of the lean forward stores its weight and multiplies by it.

A decode step multiplies a few dozen rows by every weight of the model, so at small batch
sizes its cost is reading the weights; fewer bytes per weight, read at full memory speed, is
the lever. On x86 CPUs with AVX2 fp32, fp16 and int8 use our own kernel (matmul.c: weights in
panels, read once per step at close to the machine's memory bandwidth, each output one
sequential sum over its inputs, so batch-invariant); elsewhere, or without a C compiler,
torch's kernels named below. The modes (`--weights`, LLMOS_WEIGHTS):

  fp32  fp32 weights (default; exact, batch-invariant); fallback: oneDNN's packed layout
  fp16  fp16 weights, fp32 activations and sums: half the bytes of fp32 to read, and fp16
        keeps 11 bits of each weight, so results are within rounding of fp32; fallback: fbgemm
  bf16  bfloat16 weights and activations: oneDNN-packed where the CPU has AVX512-BF16 or AMX,
        plain `F.linear` otherwise (slow on AVX2-only CPUs, which convert in software); on GPUs
  int8  int8 weights, one scale per output channel; each row of activations rounded to int16
        with its own scale (a 2^-15 step, so still batch-invariant), integer products, fp32
        sums; fallback: torch's `_weight_int8pack_mm`, which takes bf16 inputs
  int4  weight-only int4 in groups of 32 along the input with a scale and a minimum each
        (the scheme of GGUF's Q4_1, so the default model's weights come back nearly exactly),
        torch's `_weight_int4pack_mm_for_cpu` (bf16 inputs: each matmul's input is rounded to
        bf16 and its output widened back; norms, residuals, attention and the KV cache stay fp32)
  w8a8  int8 weights and int8 activations, each token's row quantized on its own (fbgemm's
        integer matmul), with SmoothQuant's per-channel rescaling calibrated at load (see
        llama.py) so that outlier channels do not swamp the 7-bit activation range: the lossiest

Every format offers `y = layer(x)` and `y = layer.add(x, residual)` (x W^T + b + residual, the
add fused into the matmul where the kernel can). Which modes are batch-invariant (a row's
result independent of the other rows) is measured by `llmos bench quality`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from llmos.config import WEIGHT_MODES
from llmos.kernel.model import matmul

CPU_ONLY = ("fp16", "int8", "int4", "w8a8")
COMPUTE_DTYPE = {
    "fp32": torch.float32, "fp16": torch.float32, "bf16": torch.bfloat16,
    "int8": torch.float32, "int4": torch.float32, "w8a8": torch.float32,
}
INT4_GROUP = 32
PANEL_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}  # modes matmul.c serves


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

    quantized = False  # True where `rows` gives the dequantized rows a tied embedding reads

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


class PanelLinear(Linear):
    """matmul.c's kernel: the weight in panels of fp32, fp16 or int8 (one scale per output)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        self.panels = matmul.pack(weight, dtype)
        self.bias = bias.detach().float().contiguous() if bias is not None else None
        self.quantized = dtype == torch.int8

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return matmul.matmul(x, self.panels, self.bias)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return matmul.matmul(x, self.panels, self.bias, residual)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` of W (dequantized): a tied embedding reads its vectors from here."""
        return matmul.rows(self.panels, ids).to(dtype)


class Int8Linear(Linear):
    """Weight-only int8: W ~ q * scale, one scale per output channel (symmetric)."""

    quantized = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        q, scale = matmul.quantize_int8(weight)
        self.q = q.to(torch.int8).contiguous()
        self.scale = scale.to(dtype)
        self.bias = bias.detach().float() if bias is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.to(self.scale.dtype), self.q, self.scale).to(x.dtype)
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
        self.bias = bias.detach().float() if bias is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        kernel_dtype = self.scales_and_zeros.dtype
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(kernel_dtype), self.packed, INT4_GROUP, self.scales_and_zeros)
        y = y.to(x.dtype)
        return y.add_(self.bias) if self.bias is not None else y


def _quantized_engine_weights(weight: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's prepacked int8 weights (per output channel, symmetric)."""
    w = weight.detach().float()
    scale = matmul.int8_scales(w).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated, but fbgemm's kernels are the fast ones here
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qweight, bias.detach().float() if bias is not None else None)


class Fp16Linear(Linear):
    """fp16 weights, fp32 activations and sums (fbgemm: the weight is widened as it is read)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float(), bias.detach().float() if bias is not None else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)


class RowInt8Linear(Linear):
    """int8 weights times int8 activations, each row (token) quantized on its own: the row is
    divided by its largest magnitude, quantized with one fixed scale (7 bits, so AVX2's 16-bit
    pair sums cannot saturate), multiplied in integers by fbgemm, and scaled back. A row's
    result depends only on that row: batch-invariant, unlike a per-batch activation scale."""

    LEVELS = 63  # [-1, 1] -> [1, 127] around a zero point of 64

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.packed = _quantized_engine_weights(weight, None)
        self.bias = bias.detach().float() if bias is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        peak = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-20)
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x / peak, 1 / self.LEVELS, 64, self.packed)
        y.mul_(peak)
        return y.add_(self.bias) if self.bias is not None else y


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, mode: str, device: torch.device) -> Linear:
    """`weight` [out, in] (and `bias`) in format `mode`, on `device`."""
    dtype = COMPUTE_DTYPE[mode]
    if device.type != "cpu":
        return Linear(weight.detach().to(device, dtype), bias.detach().to(device, dtype) if bias is not None else None)
    if mode in PANEL_DTYPES and matmul.available():
        return PanelLinear(weight, bias, PANEL_DTYPES[mode])
    if mode in ("fp32", "bf16"):
        return PackedLinear.make(weight.detach().to(dtype), bias.detach().to(dtype) if bias is not None else None)
    if mode == "fp16":
        return Fp16Linear(weight, bias)
    if mode == "int8":
        return Int8Linear(weight, bias, torch.bfloat16)
    if mode == "int4":
        return Int4Linear(weight, bias, torch.bfloat16)
    return RowInt8Linear(weight, bias)
