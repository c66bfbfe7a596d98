"""The embedding cache: every image is encoded once per model, whatever backend it goes to.

One directory per model under the cache root:

    <root>/<model-slug>/model.json       {"model_id": ..., "dim": ...}
    <root>/<model-slug>/embeddings.log   append-only records, one per encoded batch
    <root>/<model-slug>/.lock            flock: held while a process reads the log or appends

A record is `MAGIC | header length | count | crc32 | header JSON | float32 vectors`, written
with one `write` and fsynced, so the log doubles as ingest's checkpoint: a process killed at
any point leaves complete records plus at most one torn tail, which the next open cuts off. A
damaged record in the middle (a flipped bit, lost or stray bytes) costs only its own vectors:
reading resumes at the next record that checks out, and the damage is reported.
Keys are document ids (an Unsplash photo id, or the sha256 of a local file's bytes).

Several ingests may share a cache (one model, several indexes): each append, and the read at
open, hold the lock, so records never interleave and a reader never cuts off a record that a
live writer is in the middle of.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from clipsearch.errors import IngestError

MAGIC = b"CSE1"
_HEAD = struct.Struct("<4sIII")  # magic, header length, count, crc32 of header + vectors
LOG = "embeddings.log"
MODEL_FILE = "model.json"


def model_slug(model_id: str) -> str:
    """A directory name for a model id: readable, and distinct ids never collide."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")[:80] or "model"
    digest = zlib.crc32(model_id.encode()) & 0xFFFFFFFF
    return f"{readable}-{digest:08x}"


class EmbeddingCache:
    """Vectors by document id for one model. Open with `EmbeddingCache.open`."""

    def __init__(self, directory: Path, model_id: str, dim: int):
        self.dir, self.model_id, self.dim = directory, model_id, dim
        self._vectors: dict[str, np.ndarray] = {}
        self._extras: dict[str, dict[str, Any]] = {}
        self._log = None
        self._lock_fh = None
        self.truncated_bytes = 0  # torn tail cut off at open (a killed writer)
        self.damaged_records = 0  # damaged stretches skipped in the middle of the log
        self.damaged_bytes = 0

    @classmethod
    def open(cls, root: str | Path, *, model_id: str, dim: int) -> "EmbeddingCache":
        directory = Path(root) / model_slug(model_id)
        directory.mkdir(parents=True, exist_ok=True)
        self = cls(directory, model_id, dim)
        self._lock_fh = open(directory / ".lock", "a")
        try:
            with self._locked():
                self._check_model_file()
                self._load()
                self._log = open(directory / LOG, "ab")
        except BaseException:
            self.close()
            raise
        return self

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Held for one read or one append (milliseconds); the kernel drops it when its holder
        # dies, even by kill -9, so a crashed run never blocks the next one.
        fcntl.flock(self._lock_fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)

    def _check_model_file(self) -> None:
        meta = self.dir / MODEL_FILE
        if not meta.is_file():
            tmp = meta.with_name(f".{MODEL_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"model_id": self.model_id, "dim": self.dim}))
            os.replace(tmp, meta)
            return
        try:
            recorded = json.loads(meta.read_bytes())
        except (ValueError, UnicodeDecodeError):
            recorded = None
        if not isinstance(recorded, dict):
            raise IngestError(f"embedding cache {self.dir} is damaged: {meta} is not the JSON object ingest "
                              f"writes; remove {self.dir} (its vectors are encoded again) or choose another --cache-dir")
        if recorded.get("model_id") != self.model_id or recorded.get("dim") != self.dim:
            raise IngestError(f"embedding cache {self.dir} holds {recorded} not {self.model_id!r} ({self.dim}-d): "
                              "remove it or choose another --cache-dir")

    def _load(self) -> None:
        path = self.dir / LOG
        if not path.is_file():
            return
        data = path.read_bytes()
        pos = good_end = 0
        damage_from: int | None = None
        while pos < len(data):
            end = self._read_record(data, pos)
            if end is None:  # damaged here: resume at the next record that checks out
                if damage_from is None:
                    damage_from = pos
                pos = data.find(MAGIC, pos + 1)
                if pos < 0:
                    break
                continue
            if damage_from is not None:
                self.damaged_records += 1
                self.damaged_bytes += pos - damage_from
                damage_from = None
            pos = good_end = end
        if good_end < len(data):  # nothing valid after it: a torn tail, or a damaged last record
            self.truncated_bytes = len(data) - good_end
            with open(path, "r+b") as fh:
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())

    def _read_record(self, data: bytes, pos: int) -> int | None:
        """Store the record at `pos` and return where it ends, or None if it does not check out."""
        if pos + _HEAD.size > len(data):
            return None
        magic, head_len, count, crc = _HEAD.unpack_from(data, pos)
        start = pos + _HEAD.size
        end = start + head_len + count * 4 * self.dim
        if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) & 0xFFFFFFFF != crc:
            return None
        try:  # a record with a good checksum that ingest did not write (a hostile file)
            header = json.loads(data[start : start + head_len])
            ids, extras = header["ids"], header["extras"]
            if not (len(ids) == len(extras) == count and all(isinstance(k, str) for k in ids)
                    and all(isinstance(e, dict) for e in extras)):
                return None
        except (ValueError, TypeError, KeyError):
            return None
        vectors = np.frombuffer(data, dtype=np.float32, count=count * self.dim, offset=start + head_len)
        for key, vector, extra in zip(ids, vectors.reshape(count, self.dim), extras):
            self._vectors[key] = vector
            self._extras[key] = extra
        return end

    def damage_report(self) -> str | None:
        """What opening found wrong with the log, for the run's summary; None when nothing."""
        parts = []
        if self.damaged_records:
            parts.append(f"skipped {self.damaged_records} damaged record(s) ({self.damaged_bytes:,} bytes)")
        if self.truncated_bytes:
            parts.append(f"cut off {self.truncated_bytes:,} bytes of an unfinished or damaged last record")
        if not parts:
            return None
        return f"embedding cache {self.dir / LOG}: {'; '.join(parts)}; the images they held are encoded again"

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
        with self._locked():
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

    def damage_report(self) -> None:
        return None

    def close(self) -> None:
        pass
