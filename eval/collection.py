"""The evaluated collection: dataset images put through production ingest, and the way back
from index documents to dataset items.

Images go in exactly as a user's photos do, with `python -m ingest folder` (called in process
through `ingest.cli.main`). The folder handed to ingest is a staging folder of symbolic links to
the chosen images only, so a split or a `--limit` never ingests the rest of the dataset, and
nothing is copied. Ingest names a folder document by the sha256 of the file's bytes, so the
harness hashes each item itself and maps hits back by that id: byte-identical files (they exist
in real datasets) become one document that stands for all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eval.datasets import ImageItem, Skips

HASH_CHUNK = 1 << 20


class IngestFailed(RuntimeError):
    """Ingest stopped (it exits non-zero only when the whole run cannot go on, never for a bad
    image): evaluating whatever the index held before would measure the wrong collection."""


@dataclass
class Collection:
    doc_of: dict[str, str]  # item key -> document id, for items the index holds
    items_of: dict[str, list[str]]  # document id -> item keys (several for byte-identical files)
    not_indexed: list[str]  # item keys whose document is not in the index (ingest skipped them)
    index_docs: int  # documents in the index
    extra_docs: int  # documents that are no dataset item: distractors, they make recall lower
    ingest: dict = field(default_factory=dict)  # how ingest went: argv, exit code, seconds

    @property
    def duplicate_items(self) -> int:
        """Items that share their document with another item."""
        return sum(len(keys) - 1 for keys in self.items_of.values())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_hashes(items: Sequence[ImageItem], skips: Skips) -> dict[str, str]:
    """item key -> sha256 of its bytes; an unreadable file is skipped and recorded."""
    out: dict[str, str] = {}
    for item in items:
        try:
            out[item.key] = sha256_file(item.path)
        except OSError as exc:
            skips.add("unreadable image file", f"{item.path} ({exc.strerror or exc})")
    return out


def stage(items: Sequence[ImageItem], folder: Path) -> Path:
    """A folder of links to `items` (flat, numbered so equal file names cannot collide); copies
    where the filesystem has no symbolic links."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, item in enumerate(items):
        target = folder / f"{n:07d}-{item.path.name}"
        try:
            os.symlink(item.path.resolve(), target)
        except OSError:
            shutil.copyfile(item.path, target)
    return folder


def ingest_folder(folder: Path, settings, cache_dir: Path) -> dict:
    """Run production ingest over `folder` into the index the settings name. `cache_dir` holds
    ingest's embedding cache and folder state (kept only if the caller keeps the folder)."""
    from ingest.cli import main as ingest_main  # the real pipeline, imported only when used

    # The staging folder is links to the dataset's files, outside it: followed on purpose.
    argv = ["folder", str(folder), "--follow-links", "--backend", settings.index.backend, "--cache-dir", str(cache_dir)]
    env = {}
    if settings.index.backend == "faiss":
        argv += ["--index", str(settings.index.path)]
    else:  # ingest takes the OpenSearch index name from the environment only
        env["OPENSEARCH_INDEX"] = settings.opensearch.index
    t0 = time.perf_counter()
    with _environ(env):
        code = ingest_main(argv)
    if code != 0:
        raise IngestFailed(f"ingest stopped with exit code {code} (its message is above); nothing was evaluated")
    shown = [f"{k}={v}" for k, v in env.items()]
    return {"argv": [*shown, "python", "-m", "ingest", *argv], "exit_code": code,
            "seconds": round(time.perf_counter() - t0, 3)}


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def map_collection(hashes: dict[str, str], index_ids: Sequence[str], ingest: dict | None = None) -> Collection:
    """Join dataset items (by content hash) to the documents the index holds."""
    present = set(index_ids)
    doc_of: dict[str, str] = {}
    items_of: dict[str, list[str]] = {}
    not_indexed: list[str] = []
    for key, digest in hashes.items():
        if digest in present:
            doc_of[key] = digest
            items_of.setdefault(digest, []).append(key)
        else:
            not_indexed.append(key)
    return Collection(doc_of, items_of, not_indexed, len(present), len(present - set(items_of)), ingest or {})
