"""The baseline llmos is measured against: each LLM call served alone by HF `generate`,
one after another: what a FIFO scheduler over a plain transformers backend does."""

from __future__ import annotations

import time
from dataclasses import dataclass

from llmos.kernel.model.backend import Backend
from llmos.kernel.model.sampling import SamplingParams


@dataclass
class BaselineResult:
    calls: int
    tokens: int
    seconds: float

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def sequential_generate(backend: Backend, calls: list[tuple[list[int], SamplingParams]]) -> BaselineResult:
    tokens = 0
    started = time.perf_counter()
    for prompt_ids, params in calls:
        tokens += len(backend.hf_generate(prompt_ids, params.max_tokens, params.ignore_eos))
    return BaselineResult(len(calls), tokens, time.perf_counter() - started)
