"""The vector store behind swapped memory pages and the knowledge base: chromadb.

Embedded by default (a PersistentClient under the llmos data directory); a chroma server
(`chroma run`) when LLMOS_CHROMA_URL (or the config) names one, e.g. http://localhost:8000.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llmos.config import data_dir


class VectorStoreUnavailable(RuntimeError):
    """The configured chroma server cannot be reached (or the embedded store cannot open)."""


def open_client(url: str | None = None, path: Path | None = None) -> Any:
    import chromadb
    from chromadb.config import Settings

    url = url if url is not None else os.environ.get("LLMOS_CHROMA_URL") or None
    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    try:
        if url:
            parsed = urlparse(url if "://" in url else f"http://{url}")
            return chromadb.HttpClient(
                host=parsed.hostname or "localhost",
                port=parsed.port or 8000,
                ssl=parsed.scheme == "https",
                settings=settings,
            )
        target = path or (data_dir() / "chroma")
        target.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(target), settings=settings)
    except Exception as exc:  # chromadb raises plain exceptions for connection failures
        where = url or str(path or data_dir() / "chroma")
        raise VectorStoreUnavailable(f"vector store at {where} is unavailable: {exc}") from exc
