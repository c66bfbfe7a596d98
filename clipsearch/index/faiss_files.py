"""The embedded index's files on disk: the manifest, checksums, and parsing that trusts nothing.

Every generation's files are listed in the manifest with their size and sha256, written by the
save that made them and checked by every load: a flipped bit in `vectors.npy` would otherwise be
served as wrong scores, and a damaged graph file could crash faiss itself. Checking costs one
read of each file: sha256 runs at about 1.8 GB/s here (SHA-NI), 28 ms for the 51 MB of a
25k x 512 index (bench/index_load_bench.py measures the whole load).

Indexes saved before checksums existed have no "files" in their manifest. They still load (a
warning is logged; refusing would take every existing deployment down on upgrade), with every
other check below applied; any ingest into the index saves a new generation with checksums.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import IndexCorrupt, IndexMissing
from clipsearch.index.base import UNIT_TOLERANCE
from clipsearch.schema import has_surrogates, json_safe

FORMAT_VERSION = 1
# The index's manifest, beside its generations: which generation is live, the model and each
# file's checksum (the model's own file is clipsearch.models.card.CARD_FILE, another thing).
INDEX_MANIFEST = "manifest.json"
GENERATION_FILES = ("vectors.npy", "ids.json", "metadata.jsonl")  # in every generation (hnsw.faiss when large)
GENERATION = re.compile(r"gen-\d{6}")
# A JSON escape of a UTF-16 surrogate ("\ud83d"): only a row holding one can parse to a string
# that UTF-8 cannot encode, so only such rows are walked (json_safe) at load.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

log = logging.getLogger("clipsearch.index")


def file_entry(path: Path) -> dict[str, Any]:
    """What the manifest records for a file it names: size and sha256."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def read_manifest(path: Path) -> dict[str, Any]:
    """The validated manifest of the index at `path`; IndexMissing or IndexCorrupt otherwise."""
    file = path / INDEX_MANIFEST
    if not file.is_file():
        raise IndexMissing(
            f"no embedded index at {path} (no {INDEX_MANIFEST}): create it with "
            f"`python -m ingest unsplash --index {path}` or `python -m ingest folder PHOTOS --index {path}`"
        )
    try:
        manifest = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(file, f"not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise IndexCorrupt(file, "not a JSON object")
    if manifest.get("format") != FORMAT_VERSION:
        raise IndexMissing(f"index at {path} has format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    problems = [
        name for name, ok in (
            ("model_id", isinstance(manifest.get("model_id"), str)),
            ("dim", _count(manifest.get("dim")) and manifest["dim"] > 0),
            ("count", _count(manifest.get("count"))),
            ("generation", isinstance(manifest.get("generation"), str) and GENERATION.fullmatch(manifest["generation"])),
            ("files", _files_ok(manifest.get("files", {}))),
            ("hnsw", isinstance(manifest.get("hnsw", {}), dict)),
        ) if not ok
    ]
    if problems:
        raise IndexCorrupt(file, f"bad or missing {', '.join(problems)}")
    if "files" not in manifest:
        log.warning("index at %s was saved without checksums: its files are loaded unverified; any ingest into "
                    "it saves a new generation with checksums", path)
    return manifest


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _files_ok(files: Any) -> bool:
    return isinstance(files, dict) and all(
        isinstance(e, dict) and _count(e.get("bytes")) and isinstance(e.get("sha256"), str) for e in files.values())


class Generation:
    """One generation's directory, each file checked against the manifest before it is used."""

    def __init__(self, directory: Path, files: dict[str, dict] | None):
        self.dir, self.files = directory, files  # files None: saved before checksums

    def has(self, name: str) -> bool:
        """Whether the generation holds `name` and, if it has checksums, lists it."""
        return (self.dir / name).is_file() and (self.files is None or name in self.files)

    def path(self, name: str) -> Path:
        file = self.dir / name
        if self.files is not None and name not in self.files:
            raise IndexCorrupt(file, "the manifest does not list it")
        if not file.is_file():
            raise IndexCorrupt(file, "missing")
        return file

    def read(self, name: str) -> bytes:
        """The file's bytes, checked."""
        file = self.path(name)
        data = file.read_bytes()
        self._check(file, len(data), lambda: hashlib.sha256(data).hexdigest())
        return data

    def verify(self, name: str) -> Path:
        """Check a file that its reader opens itself (vectors, graph); returns its path."""
        file = self.path(name)
        self._check(file, file.stat().st_size, lambda: file_entry(file)["sha256"])
        return file

    def _check(self, file: Path, size: int, digest) -> None:
        entry = (self.files or {}).get(file.name)
        if entry is None:
            return
        if size != entry["bytes"]:
            raise IndexCorrupt(file, f"{size:,} bytes where its manifest says {entry['bytes']:,}")
        if digest() != entry["sha256"]:
            raise IndexCorrupt(file, "its contents do not match the sha256 in its manifest")


def parse_ids(data: bytes, count: int, file: Path) -> list[str]:
    try:
        ids = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(file, f"not JSON ({exc})") from None
    if not isinstance(ids, list) or len(ids) != count:
        raise IndexCorrupt(file, f"not a list of {count} ids, as its manifest says")
    escapes = _SURROGATE_ESCAPE.search(data) is not None  # the only way an id can hold a surrogate
    for i, doc_id in enumerate(ids):
        if not isinstance(doc_id, str) or not doc_id or (escapes and has_surrogates(doc_id)):
            raise IndexCorrupt(file, f"entry {i} ({doc_id!r}) is not a document id")
    if len(set(ids)) != len(ids):
        raise IndexCorrupt(file, "an id appears twice")
    return ids


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


# One decoder for every row: json.loads with an option builds a new one per call (a third of the
# parse time for 25k rows).
_DECODER = json.JSONDecoder(parse_constant=_no_constants)  # NaN / Infinity are not JSON


def parse_metadata(data: bytes, count: int, file: Path) -> list[dict]:
    """One JSON object per line; strings UTF-8 cannot encode are repaired (and logged), since a
    JSON answer holding one cannot be sent."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise IndexCorrupt(file, f"line {line} is not UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != count:
        raise IndexCorrupt(file, f"{len(lines)} rows where its manifest says {count}")
    try:  # one parse of the whole file: a third of the time of one per line
        rows = _DECODER.decode("[" + ",".join(lines) + "]")
    except ValueError:
        rows = None
    # A line holding two values or none would shift the rows: every line must hold exactly one
    # object (a JSON value cannot span lines: raw newlines are not allowed inside strings).
    if rows is None or len(rows) != count or not all(isinstance(row, dict) for row in rows):
        _diagnose(lines, file)
    if _SURROGATE_ESCAPE.search(data):
        repaired = 0
        for i, line in enumerate(lines):
            if _SURROGATE_ESCAPE.search(line.encode()):
                fixed = json_safe(rows[i])
                repaired += fixed != rows[i]
                rows[i] = fixed
        if repaired:
            log.warning("%s: %d rows held text that is not valid Unicode (lone surrogates); served with U+FFFD "
                        "instead", file, repaired)
    return rows


def _diagnose(lines: list[str], file: Path) -> None:
    """Raise IndexCorrupt naming the first line that is not one JSON object."""
    for n, line in enumerate(lines, start=1):
        try:
            row = _DECODER.decode(line)
        except ValueError as exc:
            raise IndexCorrupt(file, f"line {n} is not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise IndexCorrupt(file, f"line {n} is a JSON {type(row).__name__}, not an object")
    raise IndexCorrupt(file, "its rows are not one JSON object per line")


def check_unit_rows(vectors: np.ndarray, first_row: int, file: Path) -> np.ndarray:
    """Every row finite and of unit length (a NaN row never scores, a huge one outscores all);
    returns the rows' norms."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))  # overflow gives inf: refused too
    bad = ~(np.abs(norms - 1.0) <= UNIT_TOLERANCE)  # NaN compares false: refused
    if bad.any():
        row = int(np.argmax(bad))
        raise IndexCorrupt(file, f"row {first_row + row} is not a unit vector (norm {norms[row]:.6g})")
    return norms
