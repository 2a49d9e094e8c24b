"""The OpenAI chat-completions protocol as pydantic models: what clients send and what they get.

Requests are validated strictly (`false` is a boolean, `0` is not), ignore fields they do not
know (OpenAI clients send many harmless ones: user, presence_penalty, ...), and refuse what
llmos cannot honour (`n` > 1, `logprobs`, the legacy `functions`). Tools, tool_choice and
response_format are servers/openai_tools.py's models. Responses are declared too, so the
OpenAPI document at /openapi.json describes every body the API returns, and the schemathesis
test holds the server to it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator

from llmos.servers.openai_tools import ResponseFormat, ToolCallIn, ToolChoice, ToolDef


def _exactly(kinds: tuple[type, ...], name: str, value: Any) -> Any:
    """A value must arrive as the JSON type the schema names: pydantic's lax mode would take "5"
    for a number and 0 for a boolean, its strict mode would refuse 2.0 for an integer (JSON
    Schema counts it as one). So: lax, except that strings and booleans are not numbers."""
    if value is not None and (isinstance(value, (str, bool)) != (bool in kinds) or not isinstance(value, kinds)):
        raise ValueError(f"must be {name}")
    return value

# -- requests -------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = {"extra": "ignore"}
    type: Literal["text"] = Field(description="only text parts are supported")
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = {"extra": "ignore"}
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = Field(default=None, description="an assistant message's calls")
    tool_call_id: str | None = Field(default=None, description="a tool message: the call it answers")


class StreamOptions(BaseModel):
    model_config = {"extra": "ignore"}
    include_usage: StrictBool = False


class CompletionRequest(BaseModel):
    model_config = {"extra": "ignore"}
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1, description="0 keeps only the likeliest token: greedy")
    seed: int | None = Field(default=None, description="any integer (taken modulo 2^63)")
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="only one choice is supported")
    tools: list[ToolDef] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = Field(default=None, description="not supported")
    functions: list[Any] | None = Field(default=None, max_length=0, description="legacy, not supported: use tools")
    function_call: None = Field(default=None, description="legacy, not supported: use tool_choice")
    ignore_eos: StrictBool = False
    # Guided decoding as vLLM (guided_*) and SGLang (regex, ebnf) name it; one at most, and not
    # with response_format. A grammar is Lark or GBNF (llm.chat's response_format "grammar").
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    regex: str | None = None
    ebnf: str | None = None

    @field_validator("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        return _exactly((int, float), "a number", value)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _a_boolean(cls, value: Any) -> Any:
        return _exactly((bool,), "false", value)  # vLLM's extension: generate exactly max_tokens (benchmarks)


# -- responses ------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # null when the reply is tool calls
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class FunctionDelta(BaseModel):
    name: str | None = None  # in a call's first chunk
    arguments: str | None = None  # a piece of the arguments' JSON text


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None  # in a call's first chunk, with type and name
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (`data: {...}`; the stream ends with
    `data: [DONE]`). The last chunk carries `usage` and no choices when the request asked
    for it with stream_options.include_usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmos"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error the API returns, in OpenAI's shape."""

    error: ErrorDetail
