"""The evaluated collection: dataset images put through production ingest, and the way back
from index documents to dataset items.

Images go in exactly as a user's photos do, through `python -m ingest folder`'s path (called in
process as `ingest.run` with a `FolderSource`). The folder handed to ingest is a staging folder of symbolic links to
the chosen images only, so a split or a `--limit` never ingests the rest of the dataset, and
nothing is copied. Ingest names a folder document by the sha256 of the file's bytes, so the
harness hashes each item itself and maps hits back by that id: byte-identical files (they exist
in real datasets) become one document that stands for all of them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.errors import ClipsearchError
from clipsearch.schema import display_text
from eval.datasets import ImageItem, Skips

HASH_CHUNK = 1 << 20


class IngestFailed(RuntimeError):
    """Ingest stopped (it raises only when the whole run cannot go on, never for a bad image):
    evaluating whatever the index held before would measure the wrong collection."""


@dataclass
class Collection:
    doc_of: dict[str, str]  # item key -> document id, for items the index holds
    items_of: dict[str, list[str]]  # document id -> item keys (several for byte-identical files)
    not_indexed: list[str]  # item keys whose document is not in the index (ingest skipped them)
    index_docs: int  # documents in the index
    extra_docs: int  # documents that are no dataset item: distractors, they make recall lower
    ingest: dict = field(default_factory=dict)  # how ingest went: command, exit code, seconds, summary

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
    """Run production ingest over `folder` into the index the settings name, and print its
    summary. `cache_dir` holds ingest's embedding cache and folder state (kept only if the
    caller keeps the folder). Returns how it went, for the report."""
    import ingest  # the real pipeline, imported only when used
    from ingest.sources.folder import FolderSource

    t0 = time.perf_counter()
    try:
        # The staging folder is links to the dataset's files, outside it: followed on purpose.
        source = FolderSource(folder, follow_links=True)
        summary = ingest.run(source, settings, ingest.IngestOptions(cache_dir=cache_dir))
    except (ClipsearchError, OSError) as exc:  # what `python -m ingest` reports and exits 1 for
        message = display_text(str(exc))
        raise IngestFailed(f"ingest stopped with exit code 1: {message}; nothing was evaluated") from None
    print(summary.render())
    return {"argv": equivalent_command(folder, settings, cache_dir), "exit_code": 0,
            "seconds": round(time.perf_counter() - t0, 3), "summary": summary.to_dict()}


def equivalent_command(folder: Path, settings, cache_dir: Path) -> list[str]:
    """The `python -m ingest` command that does what `ingest_folder` did, for the report: the
    OpenSearch index name goes in the environment, where the command line takes it from."""
    embedded = settings.index.backend == "faiss"
    env = [] if embedded else [f"OPENSEARCH_INDEX={settings.opensearch.index}"]
    index = ["--index", str(settings.index.path)] if embedded else []
    return [*env, "python", "-m", "ingest", "folder", str(folder), "--follow-links", "--backend",
            settings.index.backend, "--cache-dir", str(cache_dir), *index]


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
