"""Files, confined to the calling process's sandbox root."""

from __future__ import annotations

from pydantic import BaseModel, Field

from llmos.abi.catalogue import declare

MAX_READ = 4 * 1024 * 1024
MAX_WRITE = 4 * 1024 * 1024


class ReadRequest(BaseModel):
    model_config = {"extra": "forbid"}
    path: str = Field(min_length=1, max_length=4096)
    max_bytes: int = Field(default=MAX_READ, ge=1, le=MAX_READ)


class ReadResponse(BaseModel):
    path: str
    content: str
    truncated: bool


class WriteRequest(BaseModel):
    model_config = {"extra": "forbid"}
    path: str = Field(min_length=1, max_length=4096)
    content: str = Field(max_length=MAX_WRITE)
    append: bool = False


class WriteResponse(BaseModel):
    path: str
    bytes_written: int


class ListRequest(BaseModel):
    model_config = {"extra": "forbid"}
    path: str = Field(default=".", min_length=1, max_length=4096)


class DirEntry(BaseModel):
    name: str
    is_dir: bool
    size: int


class ListResponse(BaseModel):
    path: str
    entries: list[DirEntry]


declare("fs.read", ReadRequest, ReadResponse, doc="Read a text file inside the sandbox root.")
declare(
    "fs.write", WriteRequest, WriteResponse,
    doc="Write (or append to) a text file inside the sandbox root, creating folders as needed.",
)  # fmt: skip
declare("fs.list", ListRequest, ListResponse, doc="List a folder inside the sandbox root.")
