"""A remote model: the kernel's LLM is an OpenAI-protocol server instead of a local model.

    LLMOS_MODEL=openai:http://gpu-box:8000/v1            the server's first model
    LLMOS_MODEL=openai:http://gpu-box:8000/v1#Qwen2-7B   a named one
    (API key from LLMOS_REMOTE_API_KEY, else OPENAI_API_KEY)

vLLM and SGLang speak this protocol and batch across GPUs and nodes themselves, and so does
another llmos daemon. The kernel keeps its part of the job: which process's request goes
next. `RemoteEngine` is an `Engine` (kernel/model/engine.py) like the local one: requests
queue in the same Scheduler and are admitted by its policy (`Scheduler.admit`), at most
`max_batch` in flight; a stopped process is neither admitted nor handed text until it
continues.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from llmos.kernel.model.constraint import ConstraintSpec, check_schema
from llmos.kernel.model.engine import Engine
from llmos.kernel.model.sampling import SamplingParams
from llmos.kernel.model.scheduler import Scheduler
from llmos.kernel.model.sequence import SeqStatus
from llmos.kernel.proc.process import Process

REMOTE_PREFIX = "openai:"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0  # between two stream events; a long prefill on a busy server is slow


def is_remote(spec: str) -> bool:
    return spec.startswith(REMOTE_PREFIX)


class RemoteModelError(RuntimeError):
    """The remote server is unreachable or refused a request; the message says which."""


@dataclass
class RemoteModel:
    """Where the model lives; it stands in the kernel's `backend` slot."""

    base_url: str  # ends in /v1
    model: str
    api_key: str
    max_context: int

    @property
    def name(self) -> str:
        return f"{self.model} @ {self.base_url}"

    @property
    def model_id(self) -> str:
        return self.model

    # The kernel has no tokenizer for a remote model. Memory pages (kernel/memory/manager.py) still need
    # to be measured and cut, so they are measured in UTF-8 bytes: a conservative stand-in
    # (about four bytes to a token) that decodes back to exactly the text it came from.
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="ignore")

    @classmethod
    async def open(cls, spec: str, api_key: str | None = None) -> "RemoteModel":
        """Parse `openai:URL[#MODEL]` and ask the server which models it serves."""
        import httpx

        url, _, wanted = spec[len(REMOTE_PREFIX) :].partition("#")
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise RemoteModelError(f"{spec!r}: expected openai:http://HOST:PORT/v1[#MODEL]")
        key = api_key or os.environ.get("LLMOS_REMOTE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        try:
            async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT) as client:
                resp = await client.get(f"{url}/models", headers=_auth(key))
        except httpx.HTTPError as exc:
            raise RemoteModelError(f"remote model server {url} is unreachable: {exc}") from None
        if resp.status_code != 200:
            raise RemoteModelError(f"{url}/models answered {resp.status_code}: {_error_text(resp.content)}")
        models = {m.get("id"): m for m in resp.json().get("data", []) if isinstance(m, dict)}
        if not models:
            raise RemoteModelError(f"{url} serves no models")
        model = wanted or next(iter(models))
        if model not in models:
            raise RemoteModelError(f"{url} does not serve {model!r}; it serves {', '.join(map(str, models))}")
        max_context = models[model].get("max_model_len") or 0
        return cls(url, model, key, int(max_context))



@dataclass
class RemoteSequence:
    """One chat request of a process, answered by the remote server."""

    owner: Process
    messages: list[dict[str, str]]
    params: SamplingParams
    constraint: ConstraintSpec | None = None  # passed to the server, which constrains decoding
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None
    text: str = ""
    prompt_tokens: int = 0  # as the server counts them: the protocol reports counts, not ids
    completion_tokens: int = 0
    cached_tokens: int = 0
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    slice_tokens: int = 0
    cancelled: bool = False
    error: str | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class RemoteEngine(Engine):
    def __init__(self, model: RemoteModel, scheduler: Scheduler) -> None:
        super().__init__(scheduler)
        self.model = model
        self._in_flight = 0
        self._busy_since = 0.0

    async def constrain(self, spec: ConstraintSpec) -> ConstraintSpec:
        """The server compiles constraints; a JSON schema is checked here so that an invalid
        one is EINVAL, as with the local engine, rather than the server's error."""
        if spec.kind == "json_schema":
            check_schema(spec.spec)
        return spec

    def submit_chat(
        self, proc: Process, messages: list[dict[str, str]], params: SamplingParams, constraint: ConstraintSpec | None = None
    ) -> RemoteSequence:
        seq = RemoteSequence(proc, messages, params, constraint)
        self._queue(proc, seq, messages)
        return seq

    def _abandon(self, seq: RemoteSequence) -> None:
        seq.cancel_scope.cancel()
        self._wakeup.set()

    async def run(self) -> None:
        import httpx

        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT)
        limits = httpx.Limits(max_connections=self.scheduler.max_batch)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            async with trio.open_nursery() as nursery:
                while True:
                    for seq in self.scheduler.admit():
                        nursery.start_soon(self._request, client, seq)
                    self._note_batch()
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()

    async def _request(self, client: Any, seq: RemoteSequence) -> None:
        import httpx

        url = f"{self.model.base_url}/chat/completions"
        started = time.monotonic()
        self._busy(+1)
        try:
            with seq.cancel_scope:
                async with client.stream("POST", url, json=self._body(seq), headers=_auth(self.model.api_key)) as resp:
                    if resp.status_code != 200:
                        raise RemoteModelError(f"{url} answered {resp.status_code}: {_error_text(await resp.aread())}")
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        self._on_event(seq, json.loads(data))
                        if seq.owner.stopped:  # hold the text back until the process continues
                            await seq.owner.continued.wait()
        except RemoteModelError as exc:
            seq.error = str(exc)
        except httpx.HTTPError as exc:
            seq.error = f"remote model {self.model.base_url} failed: {type(exc).__name__}: {exc}"
        except ValueError as exc:
            seq.error = f"remote model {self.model.base_url} sent an unreadable event: {exc}"
        finally:
            seq.owner.llm_time += time.monotonic() - started
            self._busy(-1)
            seq.status = SeqStatus.FINISHED
            seq.finish_reason = seq.finish_reason or ("cancelled" if seq.cancelled else "stop")
            self._end(seq)
            self._wakeup.set()

    def _busy(self, change: int) -> None:
        """busy_time: wall time with at least one request in flight, as for the local engine."""
        now = time.monotonic()
        if self._in_flight:
            self.stats.busy_time += now - self._busy_since
        self._in_flight += change
        self._busy_since = now

    def _body(self, seq: RemoteSequence) -> dict[str, Any]:
        p = seq.params
        body: dict[str, Any] = {
            "model": self.model.model,
            "messages": seq.messages,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if p.stop:
            body["stop"] = p.stop
        if p.seed is not None:
            body["seed"] = p.seed
        if p.ignore_eos:
            body["ignore_eos"] = True  # vLLM's and llmos's extension
        if seq.constraint is not None:
            body.update(constraint_fields(seq.constraint))
        return body

    def _on_event(self, seq: RemoteSequence, event: Any) -> None:
        if not isinstance(event, dict):
            raise ValueError(f"expected an object, got {type(event).__name__}")
        if "error" in event:
            raise RemoteModelError(f"remote model error: {_error_text(json.dumps(event).encode())}")
        self.stats.steps += 1  # one stream event: the nearest remote analogue of a step
        for choice in event.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                if seq.first_token_at is None:
                    seq.first_token_at = time.monotonic()
                seq.text += delta
                self._count(seq, 1)  # about a token per event; corrected by the usage below
                self._emit(seq, delta)
            seq.finish_reason = choice.get("finish_reason") or seq.finish_reason
        usage = event.get("usage")
        if isinstance(usage, dict):
            seq.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            seq.owner.prompt_tokens += seq.prompt_tokens
            self._count(seq, int(usage.get("completion_tokens") or 0) - seq.completion_tokens)
            details = usage.get("prompt_tokens_details") or {}
            seq.cached_tokens = int(details.get("cached_tokens") or 0)
            self.stats.tokens_prefilled += seq.prompt_tokens - seq.cached_tokens

    def _count(self, seq: RemoteSequence, tokens: int) -> None:
        seq.completion_tokens += tokens
        seq.owner.generated_tokens += tokens
        self.stats.tokens_generated += tokens
        if tokens > 0:
            self.scheduler.account(seq, tokens)


def constraint_fields(spec: ConstraintSpec) -> dict[str, Any]:
    """A constraint in the request fields OpenAI-protocol servers read: response_format for JSON
    (OpenAI, vLLM, SGLang, llmos); a regex or grammar as vLLM's guided_* and SGLang's fields (a
    server reads its own and ignores the other's; llmos reads both). The grammar text goes as
    given: vLLM with its guidance backend reads Lark, SGLang reads EBNF."""
    if spec.kind == "json_schema":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "llmos", "schema": spec.spec, "strict": True}}}
    if spec.kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if spec.kind == "regex":
        return {"guided_regex": spec.spec, "regex": spec.spec}
    return {"guided_grammar": spec.spec, "ebnf": spec.spec}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error_text(body: bytes) -> str:
    try:
        err = json.loads(body)
        if isinstance(err, dict) and isinstance(err.get("error"), dict):
            return str(err["error"].get("message", err["error"]))
    except ValueError:
        pass
    return body[:300].decode(errors="replace")
