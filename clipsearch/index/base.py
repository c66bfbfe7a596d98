"""The VectorIndex interface every k-NN backend implements, and the types it speaks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from clipsearch.errors import InvalidInput, ModelMismatch
from clipsearch.index.filters import Filters

# Stored vectors are L2-normalised float32: their norms are 1 to within ~1e-6 even at 4096
# dimensions. A row further off than this was not written by an encoder (damage, a bad cache).
UNIT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Document:
    id: str
    vector: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity in [-1, 1], whichever backend answered
    metadata: dict[str, Any]


@runtime_checkable
class VectorIndex(Protocol):
    model_id: str
    dim: int

    def upsert(self, docs: Iterable[Document]) -> int:
        """Insert or replace documents by id; returns how many were written. A backend may write
        the valid documents and then raise DocumentsRejected naming the others (OpenSearch)."""

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        filters: dict[str, Any] | Filters | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The k nearest documents by cosine, best first, among those matching `filters` (a
        filters object, or one already parsed by `parse_filters`)."""

    def get(self, doc_id: str) -> Document:
        """The stored document, vector included; raises NotFound."""

    def count(self) -> int: ...

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents; returns how many existed."""

    def ids(self) -> list[str]: ...

    def save(self) -> None:
        """Make everything written so far durable (files on disk, a refreshed index)."""

    def info(self) -> dict[str, Any]:
        """Backend, index type and parameters, for reports."""

    def loading(self) -> ContextManager[None]:
        """Wrap a bulk load: a backend may trade freshness for speed inside it (OpenSearch turns
        refresh and replicas off) and must restore its settings on exit, even on error.
        Ingest calls `save()` inside the block when it is done."""


def check_model(index: VectorIndex, model_id: str, dim: int) -> None:
    """Refuse to mix vectors of different models: they are not comparable."""
    if index.model_id != model_id or index.dim != dim:
        raise ModelMismatch(index.model_id, index.dim, model_id, dim)


def as_query_vector(vector, dim: int) -> np.ndarray:
    """Validate and L2-normalise a query vector of the index's dimension."""
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    if q.shape[0] != dim:
        raise InvalidInput(f"query vector has {q.shape[0]} dimensions, the index has {dim}")
    if not np.all(np.isfinite(q)):
        raise InvalidInput("query vector contains NaN or infinity")
    norm = float(np.linalg.norm(q))
    if norm == 0.0:
        raise InvalidInput("query vector is all zeros")
    return q / norm


def vector_problem(vector, dim: int) -> str | None:
    """Why `vector` cannot be a stored document's vector (wrong size, NaN or infinity, not unit
    length), or None. Ingest checks each item with this before writing it."""
    row = np.asarray(vector, dtype=np.float32).reshape(-1)
    if row.shape[0] != dim:
        return f"vector has {row.shape[0]} dimensions, the index has {dim}"
    if not np.all(np.isfinite(row)):
        return "vector contains NaN or infinity"
    norm = float(np.linalg.norm(row))
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        return f"vector is not unit length (norm {norm:.6g})"
    return None


# OpenSearch refuses a longer `_id` (IndexRequest.validate, opensearch-project/OpenSearch
# server/src/main/java/org/opensearch/action/index/IndexRequest.java: "id [...] is too long, must
# be no longer than 512 bytes"), and BulkRequest.validate fails the whole bulk request over one
# such id. Every backend applies the same rule, so an index can move between them.
MAX_ID_BYTES = 512


def id_problem(doc_id) -> str | None:
    """Why `doc_id` cannot be a document id, or None when it can."""
    if not isinstance(doc_id, str) or not doc_id:
        return f"document id must be a non-empty string, got {doc_id!r}"
    try:
        size = len(doc_id.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no JSON body or URL can carry it
        return f"document id is not valid Unicode text: {doc_id[:40]!r}"
    if size > MAX_ID_BYTES:
        return f"document id is {size} bytes of UTF-8, the limit is {MAX_ID_BYTES}: {doc_id[:40]!r}..."
    return None


def checked_vectors(docs: Sequence[Document], dim: int) -> np.ndarray:
    """Validate documents for writing (ids, metadata, vectors); their L2-normalised (N, dim) vectors."""
    for d in docs:
        problem = id_problem(d.id)
        if problem is not None:
            raise InvalidInput(problem)
        if not isinstance(d.metadata, dict):
            raise InvalidInput(f"document {d.id!r}: metadata must be a dict")
    rows = [np.asarray(d.vector, dtype=np.float32).reshape(-1) for d in docs]
    for d, row in zip(docs, rows):
        if row.shape[0] != dim:
            raise InvalidInput(f"document {d.id!r}: vector has {row.shape[0]} dimensions, the index has {dim}")
    vectors = np.stack(rows)
    for bad, problem in ((~np.isfinite(vectors).all(axis=1), "contains NaN or infinity"),
                         (~vectors.any(axis=1), "is all zeros")):
        if bad.any():
            raise InvalidInput(f"document {docs[int(np.argmax(bad))].id!r}: vector {problem}")
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInput(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_min_score(min_score) -> float | None:
    """A cosine threshold in [-1, 1], or None for none."""
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not -1.0 <= min_score <= 1.0:
        raise InvalidInput(f"min_score must be a number between -1 and 1, got {min_score!r}")
    return float(min_score)
