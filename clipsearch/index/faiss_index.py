"""The embedded k-NN backend: FAISS over files in a directory, no server.

Layout of an index directory:

    manifest.json         model id, dimension, count, index type, the live generation and
                          the size and sha256 of each of its files (checked at load: faiss_files)
    gen-000007/           one generation of data, written whole before the manifest names it
        vectors.npy       float32 (count, dim), L2-normalised
        ids.json          document ids, row order
        metadata.jsonl    one JSON object per row
        hnsw.faiss        the HNSW graph, when count >= hnsw_threshold

`FaissIndex.load(path, half=True)` (the query service's default, INDEX_MEMORY=float16) opens
it read-only with the vectors held as float16 (clipsearch.index.half): half the memory, the
same results and scores.

Saving writes a new generation and then swaps the manifest atomically, so a process killed at
any point leaves the previous complete generation readable. Exact search (numpy inner product)
serves small collections; above `hnsw_threshold` documents an HNSW graph answers, with filters
applied inside the graph search (and exact search over the matching rows when they are few).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from clipsearch.errors import IndexCorrupt, IndexMissing, InvalidInput, NotFound
from clipsearch.index.base import Document, Hit, as_query_vector, check_k, check_min_score, check_model, checked_vectors
from clipsearch.index.faiss_files import (
    FORMAT_VERSION,
    INDEX_MANIFEST,
    Generation,
    check_unit_rows,
    file_entry,
    parse_ids,
    parse_metadata,
    read_manifest,
)
from clipsearch.index.filters import Filters, filter_mask, parse_filters
from clipsearch.index.half import HalfVectors
from clipsearch.schema import json_safe


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storable(doc: Document) -> dict:
    """The metadata as it will be saved: JSON (no NaN, no objects JSON lacks), every string
    encodable as UTF-8 (json_safe); refused here rather than at the save that would fail."""
    meta = json_safe(doc.metadata)
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"document {doc.id!r}: metadata is not JSON ({exc})") from None
    return meta


class FaissIndex:
    """See the module docstring. Thread-safe; one writer process per directory."""

    backend = "faiss"

    def __init__(
        self,
        path: str | Path | None,
        *,
        model_id: str,
        dim: int,
        hnsw_threshold: int = 50_000,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        exact_below_fraction: float = 0.02,
    ):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.path = Path(path) if path is not None else None
        self.model_id, self.dim = model_id, int(dim)
        self.hnsw_threshold, self.hnsw_m = hnsw_threshold, hnsw_m
        self.ef_construction, self.ef_search = ef_construction, ef_search
        self.exact_below_fraction = exact_below_fraction
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._n = 0
        self._ids: list[str] = []
        self._meta: list[dict] = []
        self._row: dict[str, int] = {}
        self._hnsw = None  # faiss.IndexHNSWFlat over rows [0, _hnsw.ntotal)
        self._half: HalfVectors | None = None  # read-only float16 rows instead of _vectors (load(half=True))
        self._columns: dict[str, np.ndarray] = {}
        self._generation = 0
        self._lock = threading.RLock()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, half: bool = False, **opts) -> "FaissIndex":
        """The saved index at `path`; with `half`, read-only and its vectors held as float16.
        Every file is checked (faiss_files) before it is used: IndexCorrupt names the one that
        fails."""
        path = Path(path)
        manifest = read_manifest(path)
        for key, name in (("m", "hnsw_m"), ("ef_construction", "ef_construction"), ("ef_search", "ef_search")):
            if key in manifest.get("hnsw", {}):
                opts.setdefault(name, manifest["hnsw"][key])
        self = cls(path, model_id=manifest["model_id"], dim=manifest["dim"], **opts)
        gen = Generation(path / manifest["generation"], manifest.get("files"))
        count = manifest["count"]
        ids = parse_ids(gen.read("ids.json"), count, gen.dir / "ids.json")
        meta = parse_metadata(gen.read("metadata.jsonl"), count, gen.dir / "metadata.jsonl")
        vectors_file = gen.verify("vectors.npy")
        inconsistent = f"index at {path} is inconsistent: {manifest['generation']} does not match its manifest"
        if half:
            try:
                self._half = HalfVectors(vectors_file, count, self.dim)
            except ValueError as exc:
                raise IndexMissing(f"{inconsistent} ({exc})") from None
        else:
            try:
                vectors = np.load(vectors_file, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise IndexCorrupt(vectors_file, f"not a NumPy array file ({exc})") from None
            if vectors.shape != (count, self.dim) or vectors.dtype != np.float32:
                raise IndexMissing(f"{inconsistent} (vectors.npy holds {vectors.dtype} {vectors.shape})")
            check_unit_rows(vectors, 0, vectors_file)
            self._vectors = np.ascontiguousarray(vectors)
        self._n = count
        self._ids, self._meta = ids, meta
        self._row = {doc_id: i for i, doc_id in enumerate(ids)}
        self._generation = int(manifest["generation"].split("-")[1])
        if gen.has("hnsw.faiss") and self._n >= self.hnsw_threshold:
            import faiss

            self._hnsw = faiss.read_index(str(gen.verify("hnsw.faiss")))
            if self._hnsw.ntotal != self._n or self._hnsw.d != self.dim:
                self._hnsw = None  # stale: rebuilt from the vectors when first needed
        return self

    @classmethod
    def open(cls, path: str | Path, *, model_id: str, dim: int, **opts) -> "FaissIndex":
        """Load the index at `path` if there is one (checking its model), else start an empty one."""
        if (Path(path) / INDEX_MANIFEST).is_file():
            index = cls.load(path, **opts)
            check_model(index, model_id, dim)
            return index
        return cls(path, model_id=model_id, dim=dim, **opts)

    # -- writing ---------------------------------------------------------------------------
    def _writable(self) -> None:
        if self._half is not None:
            raise RuntimeError("this index was opened read-only (FaissIndex.load(half=True)): "
                               "load it without half=True to change it")

    def upsert(self, docs: Iterable[Document]) -> int:
        self._writable()
        docs = list(docs)
        if not docs:
            return 0
        vectors = checked_vectors(docs, self.dim)
        metas = [_storable(doc) for doc in docs]
        with self._lock:
            self._columns.clear()
            for doc, vec, meta in zip(docs, vectors, metas):
                row = self._row.get(doc.id)
                if row is None:
                    row = self._append_row()
                    self._ids.append(doc.id)
                    self._meta.append(meta)
                    self._row[doc.id] = row
                else:
                    self._meta[row] = meta
                    self._invalidate_graph_from(row)
                self._vectors[row] = vec
        return len(docs)

    def _append_row(self) -> int:
        if self._n == len(self._vectors):
            grown = np.zeros((max(1024, 2 * len(self._vectors)), self.dim), dtype=np.float32)
            grown[: self._n] = self._vectors[: self._n]
            self._vectors = grown
        self._n += 1
        return self._n - 1

    def _invalidate_graph_from(self, row: int) -> None:
        if self._hnsw is not None and row < self._hnsw.ntotal:
            self._hnsw = None

    def delete(self, ids: Sequence[str]) -> int:
        self._writable()
        removed = 0
        with self._lock:
            self._columns.clear()
            for doc_id in ids:
                row = self._row.pop(doc_id, None)
                if row is None:
                    continue
                last = self._n - 1
                if row != last:  # move the last row into the hole: rows stay dense
                    self._vectors[row] = self._vectors[last]
                    self._ids[row], self._meta[row] = self._ids[last], self._meta[last]
                    self._row[self._ids[row]] = row
                self._ids.pop()
                self._meta.pop()
                self._n -= 1
                self._invalidate_graph_from(min(row, last))
                if self._hnsw is not None and self._hnsw.ntotal > self._n:
                    self._hnsw = None
                removed += 1
        return removed

    def save(self) -> None:
        if self.path is None:
            raise ValueError("this index has no directory to save to")
        self._writable()
        with self._lock:
            graph = self._graph() if self._n >= self.hnsw_threshold else None
            self.path.mkdir(parents=True, exist_ok=True)
            self._generation += 1
            gen_name = f"gen-{self._generation:06d}"
            while (self.path / gen_name).exists():  # left by a writer that died before its manifest
                shutil.rmtree(self.path / gen_name)
            tmp_dir = self.path / f".{gen_name}.tmp"
            shutil.rmtree(tmp_dir, ignore_errors=True)
            tmp_dir.mkdir()
            with open(tmp_dir / "vectors.npy", "wb") as fh:
                np.save(fh, self._vectors[: self._n])
                fh.flush()
                os.fsync(fh.fileno())
            _atomic_write(tmp_dir / "ids.json", json.dumps(self._ids).encode())
            _atomic_write(
                tmp_dir / "metadata.jsonl",
                "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in self._meta).encode("utf-8"),
            )
            if graph is not None:
                import faiss

                faiss.write_index(graph, str(tmp_dir / "hnsw.faiss"))
            files = {f.name: file_entry(f) for f in sorted(tmp_dir.iterdir())}
            os.replace(tmp_dir, self.path / gen_name)
            _fsync_dir(self.path)
            manifest = {
                "format": FORMAT_VERSION,
                "model_id": self.model_id,
                "dim": self.dim,
                "count": self._n,
                "metric": "cosine",
                "index_type": "hnsw" if graph is not None else "flat",
                "hnsw": {"m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                         "threshold": self.hnsw_threshold},
                "generation": gen_name,
                "files": files,
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _atomic_write(self.path / INDEX_MANIFEST, json.dumps(manifest, indent=2).encode())
            _fsync_dir(self.path)
            for old in self.path.glob("gen-*"):
                if old.name != gen_name:
                    shutil.rmtree(old, ignore_errors=True)

    def loading(self):
        """Nothing to switch for the embedded index: writes are in memory until `save()`."""
        return contextlib.nullcontext()

    # -- reading ---------------------------------------------------------------------------
    def count(self) -> int:
        return self._n

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._ids)

    def get(self, doc_id: str) -> Document:
        with self._lock:
            row = self._row.get(doc_id)
            if row is None:
                raise NotFound(f"no document with id {doc_id!r} in the index")
            vector = self._half.rows([row])[0] if self._half is not None else self._vectors[row].copy()
            return Document(doc_id, vector, dict(self._meta[row]))

    def info(self) -> dict[str, Any]:
        hnsw = self._n >= self.hnsw_threshold
        return {
            "backend": self.backend, "model_id": self.model_id, "dim": self.dim, "count": self._n,
            "index_type": "hnsw" if hnsw else "flat",
            "vectors_in_memory": "float16" if self._half is not None else "float32",
            "params": {"m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                       "hnsw_threshold": self.hnsw_threshold} if hnsw else {},
        }

    def search(self, vector, k: int = 10, filters: dict | Filters | None = None,
               min_score: float | None = None) -> list[Hit]:
        k = check_k(k)
        q = as_query_vector(vector, self.dim)
        conds = parse_filters(filters)
        min_score = check_min_score(min_score)
        with self._lock:
            n = self._n
            if n == 0:
                return []
            mask = filter_mask(self._meta, conds, self._columns) if conds else None
            allowed = n if mask is None else int(mask.sum())
            if allowed == 0:
                return []
            k = min(k, allowed)
            # Few matching rows, or k a large share of them: exact search over those rows is both
            # cheaper and complete, where a graph walk could miss some.
            use_graph = n >= self.hnsw_threshold and allowed > max(self.exact_below_fraction * n, 4 * k)
            rows, scores = self._graph_search(q, k, mask) if use_graph else self._exact_search(q, k, mask)
            hits = [
                Hit(self._ids[r], float(np.clip(s, -1.0, 1.0)), dict(self._meta[r]))
                for r, s in zip(rows, scores)
                if r >= 0 and (min_score is None or s >= min_score)
            ]
        return hits

    def _exact_search(self, q: np.ndarray, k: int, mask: np.ndarray | None):
        if self._half is not None:
            return self._half.search(q, k, mask)
        if mask is None:
            rows = np.arange(self._n)
            scores = self._vectors[: self._n] @ q
        else:
            rows = np.flatnonzero(mask)
            scores = self._vectors[rows] @ q
        if k < len(scores):
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(len(scores))
        top = top[np.lexsort((rows[top], -scores[top]))]  # best first, ties by row: deterministic
        return rows[top], scores[top]

    def _graph(self):
        import faiss

        if self._hnsw is None:
            graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.ef_construction
            self._hnsw = graph
        if self._hnsw.ntotal < self._n:  # new rows were appended: extend the graph
            if self._half is not None:  # read-only, and its saved graph was missing or stale
                self._hnsw.reset()
                for chunk in self._half.chunks():
                    self._hnsw.add(chunk)
            else:
                self._hnsw.add(self._vectors[self._hnsw.ntotal : self._n])
        return self._hnsw

    def _graph_search(self, q: np.ndarray, k: int, mask: np.ndarray | None):
        import faiss

        graph = self._graph()
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, k)
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        scores, rows = graph.search(q.reshape(1, -1), k, params=params)
        return rows[0], scores[0]
