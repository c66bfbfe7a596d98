"""The embedding cache: every image is encoded once per model, whatever backend it goes to.

One directory per model under the cache root:

    <root>/<model-slug>/model.json       {"model_id": ..., "dim": ...}
    <root>/<model-slug>/embeddings.log   append-only records, one per encoded batch
    <root>/<model-slug>/.lock            held (flock) by the one process writing

A record is `MAGIC | header length | count | crc32 | header JSON | float32 vectors`, written
with one `write` and fsynced, so the log doubles as ingest's checkpoint: a process killed at
any point leaves complete records plus at most one torn tail, which the next open cuts off.
Keys are document ids (an Unsplash photo id, or the sha256 of a local file's bytes).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipsearch.errors import IngestError

MAGIC = b"CSE1"
_HEAD = struct.Struct("<4sIII")  # magic, header length, count, crc32 of header + vectors
LOG = "embeddings.log"


def model_slug(model_id: str) -> str:
    """A directory name for a model id: readable, and distinct ids never collide."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")[:80] or "model"
    digest = zlib.crc32(model_id.encode()) & 0xFFFFFFFF
    return f"{readable}-{digest:08x}"


class EmbeddingCache:
    """Vectors by document id for one model. Open with `EmbeddingCache.open`; one writer."""

    def __init__(self, directory: Path, model_id: str, dim: int):
        self.dir, self.model_id, self.dim = directory, model_id, dim
        self._vectors: dict[str, np.ndarray] = {}
        self._extras: dict[str, dict[str, Any]] = {}
        self._log = None
        self._lock_fh = None
        self.truncated_bytes = 0  # torn tail cut off at open (a killed writer)

    @classmethod
    def open(cls, root: str | Path, *, model_id: str, dim: int) -> "EmbeddingCache":
        directory = Path(root) / model_slug(model_id)
        directory.mkdir(parents=True, exist_ok=True)
        self = cls(directory, model_id, dim)
        self._lock()
        meta = directory / "model.json"
        if meta.is_file():
            recorded = json.loads(meta.read_text())
            if recorded.get("model_id") != model_id or recorded.get("dim") != dim:
                raise IngestError(f"embedding cache {directory} holds {recorded} not {model_id!r} ({dim}-d): "
                                  "remove it or choose another --cache-dir")
        else:
            meta.write_text(json.dumps({"model_id": model_id, "dim": dim}))
        self._load()
        self._log = open(directory / LOG, "ab")
        return self

    def _lock(self) -> None:
        # Two writers appending to one log would interleave records; the kernel drops the lock
        # when its holder dies, even by kill -9, so a crashed run never blocks the next one.
        self._lock_fh = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise IngestError(f"another ingest is using the embedding cache {self.dir}: wait for it to finish") from None

    def _load(self) -> None:
        path = self.dir / LOG
        if not path.is_file():
            return
        data = path.read_bytes()
        pos, good = 0, 0
        row_bytes = 4 * self.dim
        while pos + _HEAD.size <= len(data):
            magic, head_len, count, crc = _HEAD.unpack_from(data, pos)
            start, end = pos + _HEAD.size, pos + _HEAD.size + head_len + count * row_bytes
            if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) & 0xFFFFFFFF != crc:
                break
            header = json.loads(data[start : start + head_len])
            vectors = np.frombuffer(data, dtype=np.float32, count=count * self.dim, offset=start + head_len)
            vectors = vectors.reshape(count, self.dim)
            for i, key in enumerate(header["ids"]):
                self._vectors[key] = vectors[i]
                self._extras[key] = header["extras"][i]
            pos = good = end
        if good < len(data):
            self.truncated_bytes = len(data) - good
            with open(path, "r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, key: str) -> bool:
        return key in self._vectors

    def get(self, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        vec = self._vectors.get(key)
        return None if vec is None else (vec, self._extras[key])

    def append(self, keys: Sequence[str], vectors: np.ndarray, extras: Sequence[dict[str, Any]]) -> None:
        """Add one batch durably (written whole, then fsynced) before it goes to the index."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim) or len(extras) != len(keys):
            raise ValueError(f"cache append: {len(keys)} keys, {len(extras)} extras, vectors {vectors.shape}")
        if not keys:
            return
        header = json.dumps({"ids": list(keys), "extras": list(extras)}).encode()
        body = header + vectors.tobytes()
        record = _HEAD.pack(MAGIC, len(header), len(keys), zlib.crc32(body) & 0xFFFFFFFF) + body
        self._log.write(record)
        self._log.flush()
        os.fsync(self._log.fileno())
        for i, key in enumerate(keys):
            self._vectors[key] = vectors[i]
            self._extras[key] = dict(extras[i])

    def close(self) -> None:
        for fh in (self._log, self._lock_fh):
            if fh is not None:
                fh.close()
        self._log = self._lock_fh = None

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoCache:
    """`--no-cache`: nothing remembered; resuming then relies on the index's periodic saves."""

    def __len__(self) -> int:
        return 0

    def __contains__(self, key: str) -> bool:
        return False

    def get(self, key: str) -> None:
        return None

    def append(self, keys, vectors, extras) -> None:
        pass

    def close(self) -> None:
        pass
