"""Our own CPU kernels in C (matmul.c, attention.c, fused.c, layer.c: each says why it exists),
built for this machine on first use and loaded with ctypes.

The sources are compiled together (`cc -O3 -march=native -fopenmp`, about a second; no torch
headers) into one library in the cache folder, keyed by a hash of the sources, the flags and
the compiler, and loaded with ctypes (a call releases the GIL). torch is imported first, so the
library's libgomp.so.1 is the one torch loaded: its parallel loops run on torch's threads
rather than a second pool. Where there is no C compiler, or the CPU lacks AVX2/FMA/F16C,
`library()` is None and the callers keep torch's kernels. LLMOS_NATIVE=off turns it off (for
A/B measurements).
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
from pathlib import Path

import torch  # (also loads libgomp before the library needs it)

from llmos.config import cache_dir

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("matmul.c", "attention.c", "fused.c", "layer.c")]
HEADERS = [Path(__file__).with_name(name) for name in ("kernels.h", "simd.h")]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
C_INT, C_LONG, C_FLOAT, C_PTR = ctypes.c_int, ctypes.c_long, ctypes.c_float, ctypes.c_void_p
SIGNATURES = {
    # kind, weight, scale, N, K, x, ldx, M, y, bias, residual
    "llmos_matmul": [C_INT, C_PTR, C_PTR, C_INT, C_INT, C_PTR, C_LONG, C_INT, C_PTR, C_PTR, C_PTR],
    # q, q row stride, new kv, its row stride, keys, values, seat/head/position strides, seats,
    # lengths, rows, q_heads, kv_heads, dim, scale, out
    "llmos_decode_attention": [C_PTR, C_LONG, C_PTR, C_LONG, C_PTR, C_PTR, C_LONG, C_LONG, C_LONG, C_PTR, C_PTR, C_INT, C_INT, C_INT, C_INT, C_FLOAT, C_PTR],
    # x, ldx, weight, rows, dim, eps, out
    "llmos_rms_norm": [C_PTR, C_LONG, C_PTR, C_INT, C_INT, C_FLOAT, C_PTR],
    # x, ldx, rows, heads, dim, cos, sin, positions
    "llmos_rotary": [C_PTR, C_LONG, C_INT, C_INT, C_INT, C_PTR, C_PTR, C_PTR],
    # x, ldx, rows, width, out
    "llmos_silu_mul": [C_PTR, C_LONG, C_INT, C_INT, C_PTR],
    "llmos_panel_width": [],
    # screen (fp16 panels), exact (fp32 panels), err, N, K, x, ldx, M, banned, banned count, y
    "llmos_head_argmax": [C_PTR, C_PTR, C_PTR, C_INT, C_INT, C_PTR, C_LONG, C_INT, C_PTR, C_INT, C_PTR],
    # shape, layers, count, x, rows, positions, slab, layer stride, value offset, seat/head/position
    # strides, seats, lengths
    "llmos_decode_layers": [C_PTR, C_PTR, C_INT, C_PTR, C_INT, C_PTR, C_PTR, C_LONG, C_LONG, C_LONG, C_LONG, C_LONG, C_PTR, C_PTR],
}
RESTYPES = {"llmos_decode_layers": C_INT, "llmos_matmul": C_INT, "llmos_panel_width": C_INT, "llmos_head_argmax": C_INT}


@functools.cache
def library() -> ctypes.CDLL | None:
    if os.environ.get("LLMOS_NATIVE", "").lower() in ("off", "0", "no"):
        return None
    if platform.machine() not in ("x86_64", "AMD64") or not _cpu_has("avx2", "fma", "f16c"):
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.warning("no C compiler found: torch's kernels run instead of ours (slower at small batch sizes)")
        return None
    try:
        lib = ctypes.CDLL(str(_compiled(compiler)))
    except (OSError, subprocess.CalledProcessError) as e:
        log.warning("could not build our kernels (%s): torch's run instead", getattr(e, "stderr", None) or e)
        return None
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = RESTYPES.get(name), argtypes
    return lib


def available() -> bool:
    return library() is not None


def serves(tensor: torch.Tensor) -> bool:
    """Whether our kernels take this tensor's computation: fp32 on the CPU, and built here."""
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu" and available()


def _cpu_has(*flags: str) -> bool:
    return set(flags) <= _cpu_flags()


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _compiled(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    # -march=native builds for this CPU: a cache folder shared by machines with other CPUs (a
    # home directory on NFS, a copied image) must not hand one machine another's library.
    digest = hashlib.sha256(" ".join(FLAGS).encode() + version.encode() + " ".join(sorted(_cpu_flags())).encode())
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    folder = cache_dir() / "native"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"kernels-{digest.hexdigest()[:16]}.so"
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            built = Path(scratch) / path.name
            subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", str(built), "-lm"], check=True, capture_output=True, text=True)
            os.replace(built, path)  # atomic: processes building at once each land a whole file
    return path
