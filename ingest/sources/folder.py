"""A local folder, recursive, by image extension; incremental like rclip.

Document ids are the sha256 of the file bytes, so a renamed or moved file keeps its id and its
vector. A state file remembers, per path, the size, mtime and id last indexed: a path whose
size and mtime are unchanged (and whose id the index still has) is not even read again; a path
that disappeared has its document deleted, unless another file still has the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clipsearch.errors import IngestError
from clipsearch.images import IMAGE_EXTENSIONS
from ingest.pipeline import Item


@dataclass(frozen=True)
class Seen:
    size: int
    mtime_ns: int
    id: str


def scan(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Image files under `root` (by extension, any case), sorted, not following symlinked dirs."""
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:  # vanished or a dangling link: nothing to index
                continue
            if path.is_file():
                yield path.resolve(), st


class FolderState:
    """path -> Seen for one folder and one index, saved atomically after each index save."""

    def __init__(self, file: Path, root: Path):
        self.file, self.root = file, root
        self.files: dict[str, Seen] = {}

    @classmethod
    def for_index(cls, state_dir: Path, root: Path, index_location: str) -> "FolderState":
        key = hashlib.sha256(f"{index_location}\n{root}".encode()).hexdigest()[:16]
        self = cls(Path(state_dir) / f"folder-{key}.json", root)
        if self.file.is_file():
            try:
                raw = json.loads(self.file.read_text())
                self.files = {p: Seen(*v) for p, v in raw.get("files", {}).items()}
            except (ValueError, TypeError):
                self.files = {}  # unreadable state: everything is looked at again, nothing lost
        return self

    def save(self, files: dict[str, Seen]) -> None:
        self.files = dict(files)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        body = {"root": str(self.root), "files": {p: [s.size, s.mtime_ns, s.id] for p, s in sorted(files.items())}}
        with open(tmp, "w") as fh:
            json.dump(body, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.file)


@dataclass
class FolderPlan:
    items: list[Item]  # new or changed files
    unchanged: dict[str, Seen]  # path -> what the index already has
    stats: dict[str, os.stat_result]  # path -> stat at scan time, for every file found


def plan(root: Path, state: FolderState, indexed_ids: set[str]) -> FolderPlan:
    items, unchanged, stats = [], {}, {}
    for path, st in scan(root):
        key = str(path)
        stats[key] = st
        prev = state.files.get(key)
        if prev and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns and prev.id in indexed_ids:
            unchanged[key] = prev
        else:
            items.append(Item(key, path, None, {"source": "folder", "path": key}))
    return FolderPlan(items, unchanged, stats)


def resolve_root(folder: str | Path) -> Path:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise IngestError(f"{folder} is not a directory: give the folder of photos to ingest")
    return root.resolve()


def current_files(fplan: FolderPlan, done: dict[str, str]) -> dict[str, Seen]:
    """What the index holds for this folder: the unchanged files plus those written this run."""
    files = dict(fplan.unchanged)
    for key, doc_id in done.items():
        st = fplan.stats.get(key)
        if st is not None:
            files[key] = Seen(st.st_size, st.st_mtime_ns, doc_id)
    return files


def stale_ids(state: FolderState, fplan: FolderPlan, done: dict[str, str]) -> set[str]:
    """Ids of documents whose file is gone or changed and that no current file still has.
    (A changed file that now fails to decode loses its old document too: those bytes are gone.)"""
    live = {s.id for s in fplan.unchanged.values()} | set(done.values())
    return {s.id for s in state.files.values()} - live
