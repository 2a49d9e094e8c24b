"""llm.chat: a completion from the shared model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from llmos.abi.catalogue import declare

MAX_MESSAGE_CHARS = 200_000


class Message(BaseModel):
    model_config = {"extra": "forbid"}
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class ResponseFormat(BaseModel):
    """What the reply must be; decoding is constrained to it, so the reply always matches
    (unless cut by max_tokens or a stop string: finish_reason says so)."""

    model_config = {"extra": "forbid"}
    type: Literal["text", "json_object", "json_schema", "regex", "grammar"] = Field(
        description="text: anything; json_object: one JSON object; json_schema: JSON valid for `json_schema`; "
        "regex: text matching `pattern` (whole); grammar: text in the language of `grammar`"
    )
    json_schema: dict[str, Any] | None = Field(default=None, description="the JSON schema (Draft 2020-12)")
    pattern: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS, description="the regular expression")
    grammar: str | None = Field(
        default=None, max_length=MAX_MESSAGE_CHARS,
        description="a context-free grammar in Lark syntax (start rule `start`) or llama.cpp's GBNF (`root ::= ...`)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_spec(self) -> "ResponseFormat":
        wanted = {"json_schema": "json_schema", "regex": "pattern", "grammar": "grammar"}.get(self.type)
        for name in ("json_schema", "pattern", "grammar"):
            given = getattr(self, name) is not None
            if name == wanted and not given:
                raise ValueError(f"type {self.type!r} needs `{name}`")
            if name != wanted and given:
                raise ValueError(f"`{name}` does not go with type {self.type!r}")
        return self


class ChatRequest(BaseModel):
    model_config = {"extra": "forbid"}
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=16)
    stream: bool = False
    ignore_eos: bool = Field(default=False, description="keep generating past end-of-turn (benchmarks)")
    response_format: ResponseFormat | None = Field(default=None, description="constrain the reply (JSON, regex, grammar)")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused from the process's cache


class ChatResponse(BaseModel):
    content: str
    finish_reason: str
    usage: Usage
    ttft: float  # seconds from the call to the first token


class ChatChunk(BaseModel):
    delta: str


declare(
    "llm.chat", ChatRequest, ChatResponse, ChatChunk,
    doc="Chat completion from the shared model. With stream=true, text arrives in chunks.",
)  # fmt: skip
