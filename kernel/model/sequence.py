"""One generation request of a process: its tokens, its sampling state and its output text.

A Sequence needs no separate prefill and decode modes. Its KV cache holds the tokens already
computed; everything after that is pending. A step feeds some pending tokens: a chunk of the
prompt while prefilling, or the one token sampled last while decoding. When the step consumes
all pending tokens, the logits of the last one give the next token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable

import torch

from llmos.kernel.model.constraint import Constraint
from llmos.kernel.model.kvcache import SequenceKV
from llmos.kernel.model.sampling import SamplingParams, make_generator

if TYPE_CHECKING:
    from llmos.kernel.proc.process import Process


class SeqStatus(str, Enum):
    WAITING = "waiting"  # wants the model, not in the running batch
    RUNNING = "running"  # in the running batch
    FINISHED = "finished"


@dataclass
class Sequence:
    owner: "Process"
    prompt_ids: list[int]
    params: SamplingParams
    kv: SequenceKV
    decode: Callable[[list[int]], str]
    eos_ids: frozenset[int]
    output_ids: list[int] = field(default_factory=list)
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None  # why the engine failed it (finish_reason "error")
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    slice_tokens: int = 0  # tokens decoded since it last entered the batch
    cancelled: bool = False
    cached_tokens: int = 0  # prompt tokens whose KV was already retained when it was submitted
    text: str = ""  # output text released so far (stop strings never appear in it)
    constraint: Constraint | None = None  # what the output must match; advanced by the engine
    generator: torch.Generator = field(init=False)
    # Incremental detokenization (as vLLM does it): `_stable` is the text of output_ids[:_read],
    # final; only the tokens from `_prefix` on are decoded again, so a token costs O(1), not a
    # decode of the whole output.
    _stable: str = field(default="", init=False, repr=False)
    _prefix: int = field(default=0, init=False, repr=False)
    _read: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = make_generator(self.params.seed)

    @property
    def pid(self) -> int:
        return self.owner.pid

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_pending(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids) - self.kv.length

    def pending(self, limit: int) -> list[int]:
        start = self.kv.length
        ids = self.all_ids
        return ids[start : min(len(ids), start + limit)]

    def append(self, token_id: int) -> str:
        """Record a sampled token; return the newly released text (may be empty)."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if token_id in self.eos_ids and not self.params.ignore_eos:
            return self._finish("stop", self._full_text())
        self.output_ids.append(token_id)
        searched = len(self._stable)
        full = self._full_text()
        for stop in self.params.stop:
            cut = full.find(stop, max(0, searched - len(stop)))  # text before it was searched already
            if cut != -1:
                return self._finish("stop", full[:cut])
        if self.constraint is not None:
            if self.constraint.error is not None:
                self.error = f"constraint: {self.constraint.error}"
                return self._finish("error", full)
            if self.constraint.finished:
                return self._finish("stop", full)
        if len(self.output_ids) >= self.params.max_tokens:
            return self._finish("length", full)
        return self._release(_safe_prefix(full, self.params.stop))

    def _full_text(self) -> str:
        """The text of all output tokens; advances the stable part when the new tokens decode to
        whole characters (a multi-byte character split across tokens decodes to U+FFFD)."""
        ids = self.output_ids
        before = self.decode(ids[self._prefix : self._read])  # decoded with its left context,
        after = self.decode(ids[self._prefix :])  # so word-initial spaces come out right
        tail = after[len(before) :]
        if tail and not tail.endswith("\ufffd"):
            self._stable += tail
            self._prefix, self._read = self._read, len(ids)
            return self._stable
        return self._stable + tail

    def _release(self, upto: str) -> str:
        if len(upto) <= len(self.text):
            return ""
        delta = upto[len(self.text) :]
        self.text = upto
        return delta

    def _finish(self, reason: str, full: str | None = None) -> str:
        self.status = SeqStatus.FINISHED
        self.finish_reason = reason
        return self._release(full if full is not None else self.text)


def _safe_prefix(text: str, stops: list[str]) -> str:
    """The part of `text` that can be shown now: hold back a partial UTF-8 character and any
    tail that could still grow into a stop string."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text[end - k : end] == stop[:k]:
                end -= k
                break
    return text[:end]
