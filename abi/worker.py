"""Agent workers: what the kernel asks of the worker template, and what the template answers.

Every agent program runs in its own OS process, a worker, forked from a template process that
has the SDK and the ABI already imported (llmos.agents.worker). The kernel and the template
talk over a control socket (SOCK_SEQPACKET: one JSON message per packet, file descriptors
passed alongside with SCM_RIGHTS):

  template -> kernel  {"op": "ready", "pid", "landlock", "seccomp", "read_only"}    once, at start
  kernel -> template  {"op": "spawn", "spec": WorkerSpec}  + the worker's end of its channel
  template -> kernel  {"op": "spawned", "pid"}  + a pidfd of the worker      (or "failed", "error")
  template -> kernel  {"op": "exited", "pid", "status"}   the wait status, when it reaped a worker

Replies come in order, and an exit is reported before a spawn that could reuse its pid.
A worker's own channel speaks the syscall wire protocol (abi/wire.py).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter


class WorkerSpec(BaseModel):
    """Everything a worker needs to confine itself and run its program."""

    pid: int  # the process's llmos pid (what `sys.pid` says; the kernel never reads it back)
    name: str
    program: str
    args: list[str]
    root: str  # fs root: the worker's cwd and the tree it may write
    read_write: list[str]  # the root (or its parts, see `list_only`) and the worker's temp folder
    read_only: list[str]  # the program's own folders
    list_only: list[str] = []  # folders between the root and the kernel's data dir: listed, not read
    search_path: str | None = None  # where the program's module was found, added to sys.path
    env: dict[str, str]
    umask: int = 0o022
    nice: int = 0  # OS niceness (workers run below the kernel)
    batch: bool = True  # SCHED_BATCH: on waking it does not preempt (the kernel's loop answers first)
    address_space: int | None = None  # bytes (RLIMIT_AS)
    cpu_seconds: int | None = None  # RLIMIT_CPU
    open_files: int | None = None  # RLIMIT_NOFILE


class Spawn(BaseModel):
    op: Literal["spawn"]
    spec: WorkerSpec


class Ready(BaseModel):
    op: Literal["ready"]
    pid: int
    landlock: int  # ABI version, 0: none
    seccomp: bool
    read_only: list[str]  # what every worker may read: the interpreter and its libraries


class Spawned(BaseModel):
    op: Literal["spawned"]
    pid: int


class Failed(BaseModel):
    op: Literal["failed"]
    error: str


class Exited(BaseModel):
    op: Literal["exited"]
    pid: int
    status: int  # as os.waitpid gives it


TemplateMessage = Annotated[Union[Ready, Spawned, Failed, Exited], Field(discriminator="op")]
template_message: TypeAdapter[Ready | Spawned | Failed | Exited] = TypeAdapter(TemplateMessage)
