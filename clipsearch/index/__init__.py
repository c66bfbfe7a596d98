"""k-NN backends behind one interface: embedded FAISS (default) and OpenSearch."""

from __future__ import annotations

from clipsearch.index.base import Document, Hit, VectorIndex, check_model

__all__ = ["Document", "Hit", "VectorIndex", "check_model", "open_index"]


def open_index(settings, *, model_id: str | None = None, dim: int | None = None) -> VectorIndex:
    """The backend the settings choose.

    With `model_id` and `dim` (ingest), a missing index is created and an existing one must
    match them. Without (the server), the index must exist; the caller checks the model.
    """
    if settings.backend == "faiss":
        from clipsearch.index.faiss_index import FaissIndex

        opts = {"hnsw_threshold": settings.hnsw_threshold}
        if model_id is None:  # the server: read-only
            if settings.index_memory not in ("float16", "float32"):
                raise ValueError(f"INDEX_MEMORY must be 'float16' or 'float32', got {settings.index_memory!r}")
            return FaissIndex.load(settings.index_path, half=settings.index_memory == "float16", **opts)
        return FaissIndex.open(settings.index_path, model_id=model_id, dim=dim, **opts)
    if settings.backend == "opensearch":
        from clipsearch.index.opensearch import OpenSearchIndex

        return OpenSearchIndex.from_settings(settings, model_id=model_id, dim=dim)
    raise ValueError(f"BACKEND must be 'faiss' or 'opensearch', got {settings.backend!r}")
