"""The model's weights, loaded when the first request needs them rather than at boot.

A kernel that only runs tools, a no-op agent, a shell that lists processes: none of them waits
for the weights. What the kernel needs before then (the tokenizer for prompts and memory pages,
the KV shape for the pool, the context length, the end-of-turn tokens, the name) comes from the
tokenizer and config files, which load in a fraction of the time. The kernel's engine task calls
`load()` when the first request arrives (in a worker thread, so the kernel keeps serving
meanwhile); from then on every attribute is the real Backend's. Anything that reaches for the
weights before that (a benchmark's `hf_generate`, say) loads them there and then.

The figures taken early are checked against the loaded model's, so the two cannot drift apart.
It is driven by the same engine as a loaded Backend (BatchEngine; registered with engine_for).
"""

from __future__ import annotations

import threading
import time
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from llmos.kernel.model import linear, modelstore
from llmos.kernel.model.backend import Backend, _device, _eos_ids, kv_layout
from llmos.kernel.model.constraint import Grammars
from llmos.kernel.model.loader import engine_for


class ModelLoadError(RuntimeError):
    pass


class LazyBackend:
    def __init__(
        self, spec: str, weights: str, threads: int, device: str, name: str, tokenizer: Any, config: Any, generation: Any
    ) -> None:
        self.spec, self.threads = spec, threads
        self.weights = linear.check_mode(weights, device)
        self.device = _device(device)
        self.name = name
        self.tokenizer = tokenizer
        self.shape, self.max_context = kv_layout(config, self.weights, self.device)
        self.eos_ids = frozenset(_eos_ids(SimpleNamespace(generation_config=generation, config=config), tokenizer))
        self.vocab_size = int(config.vocab_size)  # the width of the logits, so of constraint masks
        self.load_seconds: float | None = None
        self.error: str | None = None
        self._real: Backend | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, spec: str, weights: str = "fp32", threads: int = 0, device: str = "cpu") -> "LazyBackend":
        """Read the model's tokenizer and configuration (converting a GGUF file first, once)."""
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        source = modelstore.resolve(spec)
        path: Any = source.path
        if source.gguf_file is not None:
            path = modelstore.converted_dir(source)
            if not (path / "config.json").exists():
                modelstore._convert_gguf(source, path)
        with modelstore.quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            config = AutoConfig.from_pretrained(path)
            try:
                generation = GenerationConfig.from_pretrained(path)
            except OSError:  # a checkpoint without generation_config.json
                generation = None
        return cls(spec, weights, threads, device, source.name, tokenizer, config, generation)

    @property
    def model_id(self) -> str:
        return self.name

    @property
    def loaded(self) -> bool:
        return self._real is not None

    def load(self) -> Backend:
        """Load the weights (blocking; the kernel calls it in a worker thread). Idempotent; a
        failure is kept and raised again, not retried on every request."""
        with self._lock:
            if self._real is not None:
                return self._real
            if self.error is not None:
                raise ModelLoadError(self.error)
            started = time.monotonic()
            try:
                real = Backend.load(self.spec, self.weights, self.threads, self.device)
            except Exception as exc:
                self.error = f"the model {self.name} failed to load: {type(exc).__name__}: {exc}"
                raise ModelLoadError(self.error) from exc
            early = (self.shape, self.max_context, self.eos_ids)
            if early != (real.shape, real.max_context, real.eos_ids):
                self.error = f"the model's figures changed on loading: {early} != {(real.shape, real.max_context, real.eos_ids)}"
                raise ModelLoadError(self.error)
            self.load_seconds = time.monotonic() - started
            self._real = real
            return real

    # Text and tokens, before and after loading: the same code Backend runs, on the same tokenizer.
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self._real.encode_chat(messages) if self._real is not None else Backend.encode_chat(self, messages)  # type: ignore[arg-type]

    def encode(self, text: str) -> list[int]:
        return self._real.encode(text) if self._real is not None else Backend.encode(self, text)  # type: ignore[arg-type]

    def decode(self, ids: list[int]) -> str:
        return self._real.decode(ids) if self._real is not None else Backend.decode(self, ids)  # type: ignore[arg-type]

    @cached_property
    def grammars(self) -> Grammars:
        """Constraints compile from the tokenizer alone: no need to wait for the weights."""
        return Grammars(self.tokenizer, self.vocab_size, self.eos_ids)

    def __getattr__(self, name: str) -> Any:
        # Only for what this class does not have itself: the weights' side (plan, run, model, ...).
        if name.startswith("__") or name in ("_real", "_lock", "error"):
            raise AttributeError(name)
        return getattr(self.load(), name)


# The engine a loaded Backend gets: LazyBackend is one, once loaded.
engine_for.register(LazyBackend, lambda model, scheduler, config: engine_for.dispatch(Backend)(model, scheduler, config))
