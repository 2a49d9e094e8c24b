"""llm.chat: a completion from the shared model, scheduled with everyone else's."""

from __future__ import annotations

import time

from llmos.abi.errors import Errno, SyscallError
from llmos.abi.llm import ChatChunk, ChatRequest, ChatResponse, ResponseFormat, Usage
from llmos.kernel.model.constraint import ConstraintSpec, InvalidConstraint
from llmos.kernel.model.sampling import SamplingParams
from llmos.syscalls.table import Call, syscall


@syscall("llm.chat")
async def chat(call: Call, req: ChatRequest) -> ChatResponse:
    started = time.monotonic()
    constraint = await _constraint(call, req.response_format)
    params = SamplingParams(
        req.temperature, req.top_p, req.max_tokens, [s for s in req.stop if s], req.seed, req.ignore_eos
    )

    async def stream(delta: str) -> None:
        await call.send(ChatChunk(delta=delta))

    request = await call.kernel.chat(
        call.proc, [m.model_dump() for m in req.messages], params, stream if req.stream else None, constraint
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


async def _constraint(call: Call, fmt: ResponseFormat | None) -> object | None:
    """The compiled constraint for a response_format (None for none or "text"); EINVAL saying
    what is wrong with an invalid or unsupported schema, regex or grammar."""
    if fmt is None or fmt.type == "text":
        return None
    spec = {"json_schema": fmt.json_schema, "regex": fmt.pattern, "grammar": fmt.grammar}.get(fmt.type)
    try:
        return await call.kernel.engine.constrain(ConstraintSpec(fmt.type, spec))
    except InvalidConstraint as exc:
        raise SyscallError(
            Errno.EINVAL, f"response_format: {exc}", [{"field": "response_format", "error": str(exc)}]
        ) from None
