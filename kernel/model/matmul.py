"""Our own matmul for the projections of a decode step (matmul.c says why and how).

The C source is compiled on first use for this machine's CPU (`cc -O3 -march=native -fopenmp`,
well under a second; no torch headers) into the cache folder, keyed by a hash of the source,
the flags and the compiler, and loaded with ctypes (a call releases the GIL). Where there is
no C compiler, or the CPU lacks AVX2/FMA/F16C, `available()` is False and linear.py keeps
torch's kernels. LLMOS_MATMUL=torch turns it off (for A/B measurements).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from llmos.config import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("matmul.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
PANEL = 8  # outputs per panel
TILE = 16  # outputs per tile: weights are padded to a multiple of this
W_CODES = {torch.float32: 0, torch.float16: 1, torch.int8: 2}


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("LLMOS_MATMUL", "").lower() == "torch":
        return None
    if platform.machine() not in ("x86_64", "AMD64") or not _cpu_has("avx2", "fma", "f16c"):
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.warning("no C compiler found: projections use torch's kernels (slower at small batch sizes)")
        return None
    try:
        path = _compiled(compiler)
        # torch is imported, so its libgomp is loaded: the library's libgomp.so.1 resolves to it
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        log.warning("could not build %s (%s): projections use torch's kernels", SOURCE.name, e)
        return None
    lib.llmos_matmul.restype = None
    lib.llmos_matmul.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
        ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ]
    return lib


def _cpu_has(*flags: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return all(flag in have for flag in flags)
    except OSError:
        pass
    return False


def _compiled(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
    folder = cache_dir() / "native"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"matmul-{key}.so"
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            built = Path(scratch) / path.name
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True, text=True)
            os.replace(built, path)  # atomic: processes building at once each land a whole file
    return path


def available() -> bool:
    return _library() is not None


@dataclass
class PanelWeight:
    """A weight [N, K] stored as panels [ceil16(N)/8, K, 8] in fp32, fp16 or int8 (with one
    fp32 scale per output: W ~ q * scale)."""

    panels: torch.Tensor
    scale: torch.Tensor | None
    out_features: int
    in_features: int


def pack(weight: torch.Tensor, dtype: torch.dtype) -> PanelWeight:
    """`weight` [N, K] as panels of `dtype` (fp32, fp16, or int8 symmetric per output)."""
    w = weight.detach().float()
    n, k = w.shape
    scale = None
    if dtype == torch.int8:
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        w = torch.round(w / scale[:, None]).clamp(-127, 127)
    padded = torch.zeros((n + TILE - 1) // TILE * TILE, k)
    padded[:n] = w
    panels = padded.view(-1, PANEL, k).transpose(1, 2).to(dtype).contiguous()
    return PanelWeight(panels, scale.contiguous() if scale is not None else None, n, k)


def unpack(weight: PanelWeight) -> torch.Tensor:
    """The fp32 weight [N, K] the panels hold (dequantized): tests, and tied embeddings."""
    w = weight.panels.float().transpose(1, 2).reshape(-1, weight.in_features)[: weight.out_features]
    return w * weight.scale[:, None] if weight.scale is not None else w


def matmul(
    x: torch.Tensor, weight: PanelWeight, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] fp32 -> x W^T (* scale) + bias + residual, [M, N] fp32."""
    lib = _library()
    assert lib is not None, "matmul.available() is False"
    if x.dtype != torch.float32 or x.stride(-1) != 1:
        x = x.float().contiguous()
    if residual is not None and not residual.is_contiguous():
        residual = residual.contiguous()
    if x.dim() != 2 or x.shape[1] != weight.in_features:
        raise ValueError(f"matmul: x is {tuple(x.shape)}, the weight takes {weight.in_features} inputs")
    m = x.shape[0]
    y = torch.empty(m, weight.out_features)
    if m:
        lib.llmos_matmul(
            W_CODES[weight.panels.dtype], weight.panels.data_ptr(),
            weight.scale.data_ptr() if weight.scale is not None else None,
            weight.out_features, weight.in_features, x.data_ptr(), x.stride(0), m, y.data_ptr(),
            bias.data_ptr() if bias is not None else None,
            residual.data_ptr() if residual is not None else None,
        )
    return y
