"""The search itself: query -> vector -> k-NN -> results, timed.

Built once per container with the encoder, the index and the URL fetcher passed in; holds an
LRU cache of text-query embeddings (the same popular queries repeat, and encoding is most of a
text query's time).
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from clipsearch.config import LimitSettings
from clipsearch.errors import ImageTooLarge, InvalidInput, NotFound
from clipsearch.models import Encoder
from clipsearch.images import decode_image
from clipsearch.index import VectorIndex
from server.fetch import SafeFetcher
from server.models import IdQuery, ImageQuery, Query, TextQuery, suggestion
from server.result import SearchResult

TEXT_CACHE_SIZE = 1024
RANDOM_WEIGHTS_WARNING = ("This deployment's model has random weights (a stand-in used when no checkpoint was "
                          "available), so these scores and rankings mean nothing: set MODEL_PATH to a checkpoint "
                          "directory (or MODEL_ID to a hub id), re-ingest and restart")
_WHITESPACE = str.maketrans("", "", " \t\r\n")


class LruCache:
    """A small thread-safe LRU map from query text to its (read-only) vector."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        value.flags.writeable = False  # shared between requests: nobody may change it
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def decode_base64_image(text: str, max_bytes: int) -> bytes:
    """Base64 (standard or URL-safe, line breaks allowed, or a data: URL) into bytes, size-capped."""
    query = text
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidInput("a data: URL query must be base64-encoded (data:image/png;base64,...)")
    text = text.translate(_WHITESPACE)
    if len(text) * 3 // 4 > max_bytes + 2:  # before decoding: do not allocate what we refuse
        raise ImageTooLarge("bytes", len(text) * 3 // 4, max_bytes)
    try:
        altchars = b"-_" if ("-" in text or "_" in text) else None
        return base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        hint = suggestion(query, "image")
        if not hint and "://" in query[:16]:
            hint = "; an image URL must be http(s)"
        raise InvalidInput("query is not valid base64: input_type \"image\" takes the image file's bytes "
                           "base64-encoded, a data: URL or an http(s) image URL" + hint) from None


class SearchService:
    def __init__(self, encoder: Encoder, index: VectorIndex, limits: LimitSettings, fetcher: SafeFetcher,
                 cache_size: int = TEXT_CACHE_SIZE, threads: int | None = None):
        self.encoder, self.index, self.limits, self.fetcher = encoder, index, limits, fetcher
        self.threads = threads  # the encoder's, for health
        self.text_cache = LruCache(cache_size)

    def search(self, q: Query) -> SearchResult:
        """What a valid query finds; domain errors propagate to the one mapping."""
        t0 = time.perf_counter()
        vector, exclude, cached = self._vector(q)
        t1 = time.perf_counter()
        # "More like this" leaves the document itself out (it would always come first, at 1.0):
        # ask for one more and drop it.
        hits = self.index.search(vector, q.k + 1 if exclude else q.k, q.filters, q.min_score)
        hits = [h for h in hits if h.id != exclude][: q.k]
        t2 = time.perf_counter()
        warning = RANDOM_WEIGHTS_WARNING if getattr(self.encoder, "random_weights", False) else None
        # A cached text vector was not encoded: encode is 0 and "cached" says why.
        return SearchResult(hits, q.k, self.index.model_id, self.encoder.family,
                            encode_ms=0.0 if cached else (t1 - t0) * 1000, search_ms=(t2 - t1) * 1000,
                            cached=cached, warning=warning)

    def _vector(self, q: Query) -> tuple[np.ndarray, str | None, bool]:
        """The query vector, the id to leave out of the results ("more like this"), and whether
        the vector came from the text cache."""
        if isinstance(q, TextQuery):
            vector, cached = self.cached_text_vector(q.query)
            return vector, None, cached
        if isinstance(q, IdQuery):
            try:
                return self.index.get(q.query).vector, q.query, False
            except NotFound as exc:
                hint = suggestion(q.query, "id")
                if hint:
                    raise NotFound(f"{exc}{hint}") from None
                raise
        if isinstance(q, ImageQuery) and not q.is_url:
            data = decode_base64_image(q.query, self.limits.max_image_bytes)
        else:  # the same guarded fetch for a `url` query and an image URL
            data = self.fetcher.fetch(q.query)
        return self.image_vector(data), None, False

    def text_vector(self, text: str) -> np.ndarray:
        return self.cached_text_vector(text)[0]

    def cached_text_vector(self, text: str) -> tuple[np.ndarray, bool]:
        """The text's vector, and True when it came from the cache (no encode)."""
        vector = self.text_cache.get(text)
        if vector is not None:
            return vector, True
        vector = self.encoder.encode_text(text)[0]
        self.text_cache.put(text, vector)
        return vector, False

    def image_vector(self, data: bytes) -> np.ndarray:
        image = decode_image(data, max_bytes=self.limits.max_image_bytes, max_pixels=self.limits.max_image_pixels)
        return self.encoder.encode_images([image])[0]

    def health(self) -> dict[str, Any]:
        card = self.encoder.card
        return {"status": "ok", "model": self.index.model_id, "family": self.encoder.family,
                "suggested_min_score": card.suggested_min_score, "dim": self.index.dim, "count": self.index.count(),
                "backend": getattr(self.index, "backend", type(self.index).__name__),
                "towers": list(getattr(self.encoder, "loaded_towers", ())), "threads": self.threads,
                "text_cache": len(self.text_cache), "random_weights": bool(getattr(self.encoder, "random_weights", False))}
