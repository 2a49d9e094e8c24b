"""Tools are syscalls: `@tool` turns a typed Python function into one.

    @tool("calc", timeout=2.0)
    def calc(expression: str) -> float:
        \"\"\"Evaluate an arithmetic expression.\"\"\"

The signature gives the request model (pydantic, unknown fields refused), the return
annotation the response model (a BaseModel as it is, anything else as `{"result": value}`),
the docstring the description (an `Args:` section describes the parameters), and the request
model the JSON schema that `tools.list` shows an agent or a model (agents/tooluse.py). A
parameter annotated `Call` receives the caller's context and is not part of the request.
A built-in tool is declared in the ABI (llmos.abi) like every syscall: then its models and
description come from there, and its parameters must be the request's fields.

Running a tool: an async one is awaited; a sync one runs in a worker thread drawn from the
tools' own thread limiter (so hung tools cannot take the engine's threads), abandoned if it
overruns. Either way it runs in a trio cancel scope with the tool's timeout (ETIMEDOUT), and
an exception becomes a typed error: OSError kinds keep their meaning, ValueError and
arithmetic errors are EINVAL, the rest EIO with the traceback in the process's log.
"""

from __future__ import annotations

import inspect
import math
import re
import traceback
from fnmatch import fnmatchcase
from functools import partial
from typing import Annotated, Any, Callable, get_type_hints

import trio
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
)

from llmos.abi import SYSCALLS, Ok
from llmos.abi.errors import Errno, SyscallError
from llmos.abi.tools import ListToolsRequest, ToolInfo, ToolList
from llmos.syscalls.table import TABLE, Call, Syscall, add, every_syscall, syscall

DEFAULT_TIMEOUT = 30.0  # seconds; None means no limit (a blocking call such as ipc.recv)
TOOL_THREADS = 8  # sync tools running at once; more wait for a free thread
MAX_STR = 1 << 20  # a plain `str` argument longer than this is refused (E2BIG)

_threads = trio.lowlevel.RunVar[trio.CapacityLimiter]("tool_threads")


def tool(name: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT, description: str | None = None):
    """Register the decorated function as the syscall `name` (default: the function's name)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        make_tool(fn, name or fn.__name__, timeout, description)
        return fn

    return register


def make_tool(fn: Callable[..., Any], name: str, timeout: float | None = DEFAULT_TIMEOUT, description: str | None = None):
    """Build the syscall for `fn` and add it to the table."""
    doc, param_docs = _parse_doc(inspect.getdoc(fn) or "")
    hints = get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    call_param = None
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"tool {name}: parameter {p.name} must be a plain keyword-able parameter")
        if p.name not in hints:
            raise TypeError(f"tool {name}: parameter {p.name} needs a type annotation")
        if hints[p.name] is Call:
            call_param = p.name
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (_bounded(hints[p.name]), Field(default, description=param_docs.get(p.name)))
    is_async = inspect.iscoroutinefunction(fn)
    if call_param is not None and not is_async:
        raise TypeError(f"tool {name}: only an async tool may take the Call (kernel state is not thread-safe)")
    spec = SYSCALLS.get(name)
    if spec is not None:  # declared in the ABI: its models, checked against the signature
        if set(fields) != set(spec.request.model_fields):
            raise TypeError(f"tool {name}: parameters {sorted(fields)} are not the ABI request's {sorted(spec.request.model_fields)}")
        request, response, wrap = spec.request, spec.response, _wrapper(spec.response)
        doc = spec.doc
    else:
        base = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part) or "Tool"
        request = create_model(f"{base}Request", __config__=ConfigDict(extra="forbid"), **fields)
        response, wrap = _response_model(hints.get("return", Any), base)

    async def handler(call: Call, req: BaseModel) -> BaseModel:
        kwargs = {field: getattr(req, field) for field in fields}
        if call_param is not None:
            kwargs[call_param] = call
        value = await run_bounded(call, name, timeout, fn, kwargs, is_async)
        try:
            return wrap(value)
        except ValidationError as exc:
            raise SyscallError(Errno.EIO, f"{name} returned a value that does not fit its type: {exc}") from None

    handler.__name__ = fn.__name__
    add(Syscall(name, request, response, handler, None, description or doc))
    return TABLE[name]


async def run_bounded(
    call: Call, name: str, timeout: float | None, fn: Callable[..., Any], kwargs: dict[str, Any], is_async: bool
) -> Any:
    """Run a tool body within its timeout; whatever it raises comes out as a SyscallError."""
    with trio.move_on_after(math.inf if timeout is None else timeout):
        try:
            if is_async:
                return await fn(**kwargs)
            return await trio.to_thread.run_sync(partial(fn, **kwargs), abandon_on_cancel=True, limiter=_limiter())
        except (SyscallError, trio.Cancelled):
            raise
        except Exception as exc:
            errno = errno_for(exc)
            if errno is Errno.EIO:
                call.proc.write_log("error", f"tool {name} raised:\n{''.join(traceback.format_exception(exc)).rstrip()}")
            raise SyscallError(errno, f"{name}: {type(exc).__name__}: {exc}"[:2000]) from exc
    raise SyscallError(Errno.ETIMEDOUT, f"{name} did not finish within {timeout:g} s")


def errno_for(exc: Exception) -> Errno:
    if isinstance(exc, FileNotFoundError):
        return Errno.ENOENT
    if isinstance(exc, PermissionError):
        return Errno.EPERM
    if isinstance(exc, TimeoutError):
        return Errno.ETIMEDOUT
    if isinstance(exc, (ValueError, ArithmeticError)):
        return Errno.EINVAL
    return Errno.EIO


def _limiter() -> trio.CapacityLimiter:
    try:
        return _threads.get()
    except LookupError:
        limiter = trio.CapacityLimiter(TOOL_THREADS)
        _threads.set(limiter)
        return limiter


def _bounded(annotation: Any) -> Any:
    """A plain `str` gets a length limit, so an oversized argument is refused up front."""
    if annotation is str:
        return Annotated[str, StringConstraints(max_length=MAX_STR)]
    return annotation


def _wrapper(model: type[BaseModel]) -> Callable[[Any], BaseModel]:
    """How a tool's return value becomes its ABI response: the model itself, None for Ok, a
    plain value for a `{"result": ...}` model, a mapping for anything else."""
    if model is Ok:
        return lambda v: v if isinstance(v, Ok) else Ok()
    if set(model.model_fields) == {"result"}:
        return lambda v: v if isinstance(v, model) else model(result=v)
    return lambda v: v if isinstance(v, model) else model.model_validate(v)


def _response_model(annotation: Any, base: str) -> tuple[type[BaseModel], Callable[[Any], BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        model = annotation
        return model, lambda v: v if isinstance(v, model) else model.model_validate(v)
    if annotation is None or annotation is type(None):
        return Ok, lambda v: Ok()
    model = create_model(f"{base}Response", result=(annotation, ...))
    return model, lambda v: model(result=v)


def _parse_doc(doc: str) -> tuple[str, dict[str, str]]:
    """The description, and the parameters' descriptions from a Google-style `Args:` section."""
    head, sep, rest = doc.partition("\nArgs:\n")
    params: dict[str, str] = {}
    if sep:
        for line in rest.splitlines():
            m = re.match(r"\s+(\w+)(?: \(.*?\))?: (.*)", line)
            if m:
                params[m.group(1)] = m.group(2).strip()
            elif not line.strip() or not line.startswith(" "):
                break
    return head.strip(), params


# -- tools.list: what the caller may use, as a model would need to see it -----------------


@syscall("tools.list")
async def list_tools(call: Call, req: ListToolsRequest) -> ToolList:
    names = req.names
    caps = call.kernel.caps[call.proc.pid]
    entries = every_syscall(call.kernel)
    tools = [
        ToolInfo(name=e.name, description=e.doc, parameters=e.arguments_schema(), streaming=e.chunk is not None)
        for e in sorted(entries.values(), key=lambda e: e.name)
        if caps.allows(e.name) and (names is None or any(fnmatchcase(e.name, n) for n in names))
    ]
    return ToolList(tools=tools)
