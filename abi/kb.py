"""The knowledge base: documents chunked, embedded and searched by meaning."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from llmos.abi.catalogue import Empty, declare

MAX_TEXT = 4 * 1024 * 1024
Collection = Annotated[str, StringConstraints(min_length=1, max_length=48)]
PathArg = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class Document(BaseModel):
    model_config = {"extra": "forbid"}
    source: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT)]


class IngestRequest(BaseModel):
    model_config = {"extra": "forbid"}
    paths: list[PathArg] = Field(
        default_factory=list, max_length=256, description="files or folders (walked for .md .markdown .txt .rst files)"
    )
    texts: list[Document] = Field(default_factory=list, max_length=256, description="documents given as {source, text}")
    collection: Collection = Field(default="default", description="which knowledge base")


class IngestedSource(BaseModel):
    source: str
    chunks: int


class IngestResult(BaseModel):
    collection: str
    sources: list[IngestedSource]
    chunks: int
    skipped: list[str]  # files left out: outside the root, too large, unreadable


class SearchRequest(BaseModel):
    model_config = {"extra": "forbid"}
    query: str = Field(min_length=1, max_length=4000, description="a question or a description of what to find")
    k: int = Field(default=5, ge=1, le=50, description="how many chunks at most")
    collection: Collection = Field(default="default", description="which knowledge base")
    min_score: float | None = Field(default=None, ge=-1, le=1, description="leave out chunks scoring below this")


class Hit(BaseModel):
    text: str
    source: str
    index: int  # the chunk's place in its source
    heading: str
    score: float  # cosine similarity of question and chunk


class SearchResult(BaseModel):
    collection: str
    hits: list[Hit]


class Collections(BaseModel):
    collections: dict[str, int]  # name -> chunks


class DropRequest(BaseModel):
    model_config = {"extra": "forbid"}
    collection: Collection


class Dropped(BaseModel):
    result: bool  # false if there was no such knowledge base


declare(
    "kb.ingest", IngestRequest, IngestResult,
    doc="""Add documents to a knowledge base: text/markdown files or folders inside the caller's
    root, and texts given directly. Ingesting a source again replaces it.""",
)  # fmt: skip
declare(
    "kb.search", SearchRequest, SearchResult,
    doc="""Search a knowledge base by meaning: the chunks closest to the query, best first, each
    with its source and a relevance score (cosine similarity, 1 = same meaning).""",
)  # fmt: skip
declare("kb.list", Empty, Collections, doc="The knowledge bases and how many chunks each holds.")
declare("kb.drop", DropRequest, Dropped, doc="Delete a knowledge base; false if there was none by that name.")
