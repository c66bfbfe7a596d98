"""k-NN backends behind one interface: embedded FAISS (default) and OpenSearch."""

from __future__ import annotations

from clipsearch.config import IndexSettings, OpenSearchSettings
from clipsearch.index.base import Document, Hit, VectorIndex, check_model

__all__ = ["Document", "Hit", "VectorIndex", "check_model", "open_index"]


def open_index(settings: IndexSettings, opensearch: OpenSearchSettings | None = None, *,
               model_id: str | None = None, dim: int | None = None) -> VectorIndex:
    """The backend the index settings choose (OpenSearch with its own section).

    With `model_id` and `dim` (ingest), a missing index is created and an existing one must
    match them. Without (the server), the index must exist; the caller checks the model.
    """
    if settings.backend == "faiss":
        from clipsearch.index.faiss_index import FaissIndex

        opts = {"hnsw_threshold": settings.hnsw_threshold}
        if model_id is None:  # the server: read-only
            if settings.memory not in ("float16", "float32"):
                raise ValueError(f"INDEX_MEMORY must be 'float16' or 'float32', got {settings.memory!r}")
            return FaissIndex.load(settings.path, half=settings.memory == "float16", **opts)
        return FaissIndex.open(settings.path, model_id=model_id, dim=dim, **opts)
    if settings.backend == "opensearch":
        from clipsearch.index.opensearch import OpenSearchIndex

        if opensearch is None:
            raise TypeError("open_index: BACKEND=opensearch needs the OpenSearch settings")
        return OpenSearchIndex.from_settings(opensearch, model_id=model_id, dim=dim)
    raise ValueError(f"BACKEND must be 'faiss' or 'opensearch', got {settings.backend!r}")
