"""llm.chat: a completion from the shared model, scheduled with everyone else's."""

from __future__ import annotations

import time

from llmos.abi.errors import Errno, SyscallError, killed
from llmos.abi.llm import ChatChunk, ChatRequest, ChatResponse, ResponseFormat, Usage
from llmos.kernel.model.constraint import ConstraintSpec, InvalidConstraint
from llmos.kernel.model.engine import ContextTooLong
from llmos.kernel.model.sampling import SamplingParams
from llmos.kernel.proc.quota import tokens_used
from llmos.kernel.state.events import Event
from llmos.syscalls.table import Call, syscall


@syscall("llm.chat")
async def chat(call: Call, req: ChatRequest) -> ChatResponse:
    kernel, proc = call.kernel, call.proc
    started = time.monotonic()
    constraint = await _constraint(call, req.response_format)  # awaits: before the busy check and submit
    if proc.wchan == "llm":
        raise SyscallError(Errno.EBUSY, f"process {proc.pid} already has an llm.chat in progress")
    params = SamplingParams(
        req.temperature, req.top_p, req.max_tokens, [s for s in req.stop if s], req.seed, req.ignore_eos
    )
    try:
        seq = kernel.engine.submit_chat(proc, [m.model_dump() for m in req.messages], params, constraint)
    except ContextTooLong as exc:
        raise SyscallError(Errno.E2BIG, str(exc)) from None
    quota = kernel.caps[proc.pid].quota
    if quota.max_tokens is not None:
        # Generate at most one token past the quota (prompt included): that token exceeds it
        # and kills the process as it arrives, so the bill is never more than the limit + 1.
        # (Nothing has run yet: the engine steps only when this task yields.)
        seq.params.max_tokens = min(seq.params.max_tokens, max(1, quota.max_tokens - tokens_used(proc) + 1))
        if not kernel.enforce_quota(proc):  # the prompt alone went over
            kernel.engine.release(seq)
            raise killed(proc.pid, proc.kill_reason)
    try:
        async for delta in kernel.engine.output(seq):
            if not kernel.enforce_quota(proc):  # max_tokens: stop generating at once
                raise killed(proc.pid, proc.kill_reason)
            kernel.events.publish(Event(proc.pid, "text", delta))
            if req.stream:
                await call.send(ChatChunk(delta=delta))
    finally:
        kernel.engine.release(seq)
    if seq.error is not None:
        raise SyscallError(Errno.EIO, f"the model failed on this request: {seq.error}")
    kernel.events.publish(Event(proc.pid, "text", "\n"))
    proc.write_log("llm", f"[{len(seq.output_ids)} tokens, {seq.finish_reason}] {seq.text}")
    return ChatResponse(
        content=seq.text,
        finish_reason=seq.finish_reason or "stop",
        usage=Usage(
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.cached_tokens,
        ),
        ttft=round((seq.first_token_at or time.monotonic()) - started, 4),
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
