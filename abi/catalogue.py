"""The catalogue of syscalls: for each name, its request model, response model, stream chunk
model and description. It is the contract between an agent and the kernel (like the syscall
numbers and structs of a libc header): the kernel's table binds a handler to every entry, and
a client — an agent worker, the remote SDK, the shell — reads replies with it, without
loading the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class Spec:
    name: str
    request: type[BaseModel]
    response: type[BaseModel]
    chunk: type[BaseModel] | None  # streaming syscalls send these before the response
    doc: str


SYSCALLS: dict[str, Spec] = {}


def declare(
    name: str, request: type[BaseModel], response: type[BaseModel], chunk: type[BaseModel] | None = None, doc: str = ""
) -> Spec:
    """Add a syscall to the catalogue (done once, when its family's module is imported)."""
    if name in SYSCALLS:
        raise ValueError(f"syscall {name!r} is declared twice")
    spec = Spec(name, request, response, chunk, " ".join(doc.split()))
    SYSCALLS[name] = spec
    return spec


class Empty(BaseModel):
    """The request of a syscall that takes no arguments."""

    model_config = {"extra": "forbid"}


class Ok(BaseModel):
    """The response of a syscall that returns nothing but success."""

    ok: bool = True
