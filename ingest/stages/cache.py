"""The cache stage: every image is encoded once per model.

Before decoding, `lookup` finds a vector that is already known: in the embedding cache
(`ingest.cache`), or in the index itself (a moved file: same bytes, new path). After encoding,
each batch is appended to the cache, fsynced, before it goes to the index: a run killed at any
point finds each image in the index, in the cache, or nowhere, and encodes only the last again.
"""

from __future__ import annotations

import numpy as np

from clipsearch.index import VectorIndex
from clipsearch.index.base import vector_problem
from ingest.cache import EmbeddingCache, NoCache
from ingest.stages.base import Entry


class CacheStage:
    def __init__(self, cache: EmbeddingCache | NoCache, index: VectorIndex, indexed_ids: set[str]):
        self.cache, self.index, self.indexed_ids = cache, index, indexed_ids
        self.bad = 0  # cache entries that were not unit vectors of the index's size (a damaged cache)

    def lookup(self, entry: Entry) -> bool:
        """Set the entry's vector and extras if they are known already; whether they were."""
        cached = self.cache.get(entry.doc_id)
        if cached is not None:
            if vector_problem(cached[0], self.index.dim) is None:
                entry.vector, entry.extras = cached
                return True
            self.bad += 1  # a damaged (or hostile) cache entry: encode the image again
        if entry.doc_id in self.indexed_ids:  # e.g. a moved file: same bytes, new path; reuse its vector
            doc = self.index.get(entry.doc_id)
            extras = {k: doc.metadata[k] for k in ("width", "height") if k in doc.metadata}
            self.cache.append([entry.doc_id], np.asarray(doc.vector, dtype=np.float32).reshape(1, -1), [extras])
            entry.vector, entry.extras = doc.vector, extras
            return True
        return False

    def __call__(self, batch: list[Entry]) -> None:
        """Append a batch of encoded entries durably."""
        if batch:
            self.cache.append([e.doc_id for e in batch], np.stack([e.vector for e in batch]), [e.extras for e in batch])
