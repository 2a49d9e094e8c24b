"""llm.chat: a completion from the shared model, scheduled with everyone else's."""

from __future__ import annotations

import time

from llmos.abi.llm import ChatChunk, ChatRequest, ChatResponse, Usage
from llmos.kernel.model.sampling import SamplingParams
from llmos.syscalls.table import Call, syscall


@syscall("llm.chat")
async def chat(call: Call, req: ChatRequest) -> ChatResponse:
    started = time.monotonic()
    params = SamplingParams(
        req.temperature, req.top_p, req.max_tokens, [s for s in req.stop if s], req.seed, req.ignore_eos
    )

    async def stream(delta: str) -> None:
        await call.send(ChatChunk(delta=delta))

    request = await call.kernel.chat(
        call.proc, [m.model_dump() for m in req.messages], params, stream if req.stream else None
    )
    return ChatResponse(
        content=request.text,
        finish_reason=request.finish_reason or "stop",
        usage=Usage(
            prompt_tokens=request.prompt_tokens,
            completion_tokens=request.completion_tokens,
            cached_tokens=request.cached_tokens,
        ),
        ttft=round((request.first_token_at or time.monotonic()) - started, 4),
    )
