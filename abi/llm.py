"""llm.chat: a completion from the shared model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmos.abi.catalogue import declare

MAX_MESSAGE_CHARS = 200_000


class Message(BaseModel):
    model_config = {"extra": "forbid"}
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


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
