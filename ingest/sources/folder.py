"""A local folder, recursive, by image extension; incremental like rclip.

Document ids are the sha256 of the file bytes, so a renamed or moved file keeps its id and its
vector. A state file remembers, per path, the size, mtime and id last indexed: a path whose
size and mtime are unchanged (and whose id the index still has) is not even read again; a path
that disappeared has its document deleted, unless another file still has the same bytes.

What leaves this machine is the path relative to the folder (metadata `path`): the absolute
location on the ingest host is kept only in the state file, never in the index or the API. File
names that are not UTF-8 are kept exactly in the state (os.fsdecode's surrogate escapes, which
JSON's \\u escapes carry), and shown as `\\xNN` in metadata and reports.

Only regular files are read. A symbolic link is followed only where it stays inside the folder,
unless `follow_links` (--follow-links) allows links anywhere, directories included (each
directory walked once, so link loops end). Devices, FIFOs, sockets and anything under /proc,
/sys or /dev are never opened, wherever a link points.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from clipsearch.errors import IngestError
from clipsearch.images import IMAGE_EXTENSIONS
from clipsearch.schema import display_text
from ingest.sources.base import Item, SourceContext

STATE_VERSION = 2  # 2: metadata paths are relative to the folder (1 stored absolute ones)
# Kernel pseudo-filesystems and device nodes: a "regular file" there (/proc/self/environ) is not
# a photo, and reading it can leak secrets or never end.
FORBIDDEN_ROOTS = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))


@dataclass(frozen=True)
class Seen:
    size: int
    mtime_ns: int
    id: str


@dataclass(frozen=True)
class Found:
    key: str  # the file's path under the folder, absolute, exactly as the OS names it (state key)
    relative: str  # the path relative to the folder, for metadata and reports (JSON-safe)
    target: Path  # what is read: the file itself, or where its link points
    stat: os.stat_result  # of the target


def _inside(path: str | Path, root: Path) -> bool:
    return Path(path) == root or root in Path(path).parents


def _forbidden(path: str) -> bool:
    return any(_inside(path, r) for r in FORBIDDEN_ROOTS)


def _check(path: str, root: Path, follow_links: bool) -> tuple[Path | None, os.stat_result | None, str | None]:
    """(target, its stat, None) for a file to ingest, or (None, None, why it is skipped)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None, None, "vanished during the scan"
    target = path
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError:  # dangling, or a loop of links (ELOOP)
            return None, None, "broken or looping link"
        target = os.path.realpath(path)
        if not follow_links and not _inside(target, root):
            return None, None, "link out of the folder (--follow-links follows it)"
    if _forbidden(target):
        return None, None, "device or kernel file"
    if not stat.S_ISREG(st.st_mode):
        return None, None, "not a regular file (FIFO, device, socket or directory)"
    return Path(target), st, None


def scan(root: Path, skipped: Counter, follow_links: bool = False) -> Iterator[Found]:
    """Image files under `root` (by extension, any case), sorted; what is passed over is counted
    in `skipped` by reason."""
    walked: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        if follow_links:  # a linked directory may lead back up, or out to somewhere forbidden
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            real = os.path.realpath(dirpath)
            if (st.st_dev, st.st_ino) in walked or _forbidden(real):
                dirnames[:] = []
                continue
            walked.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(dirpath, name)
            target, st, why = _check(path, root, follow_links)
            if why is not None:
                skipped[why] += 1
                continue
            yield Found(path, display_text(os.path.relpath(path, root)), target, st)


class FolderState:
    """path -> Seen for one folder and one index, saved atomically after each index save, and
    `removing`: ids of gone or changed files that a run had not deleted yet when it saved (a run
    killed after that save deletes them next time). `current` is False for a state written
    before metadata paths were relative: nothing counts as unchanged then, so every file's
    document is written again (its vector from the cache or the index, not encoded) with the
    relative path."""

    def __init__(self, file: Path, root: Path):
        self.file, self.root = file, root
        self.files: dict[str, Seen] = {}
        self.removing: set[str] = set()
        self.current = True

    @classmethod
    def for_index(cls, state_dir: Path, root: Path, index_location: str) -> "FolderState":
        key = hashlib.sha256(os.fsencode(f"{index_location}\n{root}")).hexdigest()[:16]
        self = cls(Path(state_dir) / f"folder-{key}.json", root)
        if self.file.is_file():
            try:
                raw = json.loads(self.file.read_bytes())
                self.files = {p: Seen(*v) for p, v in raw.get("files", {}).items()}
                self.removing = {i for i in raw.get("removing", []) if isinstance(i, str)}
                self.current = raw.get("version") == STATE_VERSION
            except (ValueError, TypeError, AttributeError):
                self.files, self.removing = {}, set()  # unreadable state: everything is looked at again
        return self

    def save(self, files: dict[str, Seen], removing: set[str] = frozenset()) -> None:
        self.files, self.removing, self.current = dict(files), set(removing), True
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        # json's default ASCII escapes carry a name's surrogate escapes exactly (not UTF-8 safe).
        body = {"version": STATE_VERSION, "root": str(self.root),
                "files": {p: [s.size, s.mtime_ns, s.id] for p, s in sorted(files.items())},
                "removing": sorted(self.removing)}
        with open(tmp, "w", encoding="ascii") as fh:
            json.dump(body, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.file)


@dataclass
class FolderPlan:
    items: list[Item]  # new or changed files
    unchanged: dict[str, Seen]  # path -> what the index already has
    stats: dict[str, os.stat_result]  # path -> stat at scan time, for every file found


def plan(root: Path, state: FolderState, indexed_ids: set[str], skipped: Counter,
         follow_links: bool = False) -> FolderPlan:
    items, unchanged, stats = [], {}, {}
    for found in scan(root, skipped, follow_links):
        st = found.stat
        stats[found.key] = st
        prev = state.files.get(found.key)
        if (state.current and prev and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns
                and prev.id in indexed_ids):
            unchanged[found.key] = prev
        else:
            items.append(Item(found.key, found.target, None, {"source": "folder", "path": found.relative},
                              label=found.relative))
    return FolderPlan(items, unchanged, stats)


def resolve_root(folder: str | Path) -> Path:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise IngestError(f"{folder} is not a directory: give the folder of photos to ingest")
    return root.resolve()


def current_files(fplan: FolderPlan, done: Mapping[str, str]) -> dict[str, Seen]:
    """What the index holds for this folder: the unchanged files plus those written this run."""
    files = dict(fplan.unchanged)
    for key, doc_id in done.items():
        st = fplan.stats.get(key)
        if st is not None:
            files[key] = Seen(st.st_size, st.st_mtime_ns, doc_id)
    return files


def stale_ids(before: set[str], fplan: FolderPlan, done: Mapping[str, str]) -> set[str]:
    """Of the ids the index held for this folder as the run started (`before`), those no current
    file has: their file is gone or changed. (A changed file that now fails to decode loses its
    old document too: those bytes are gone.)"""
    live = {s.id for s in fplan.unchanged.values()} | set(done.values())
    return before - live


class FolderSource:
    """`python -m ingest folder PATH` as a `Source`: scans, skips what its state says is
    unchanged, records the state after each index save, and removes what is gone at the end."""

    name = "folder"
    stage = "scan"

    def __init__(self, folder: str | Path, *, follow_links: bool = False):
        self.root = resolve_root(folder)  # a path that is no folder fails here, before anything is opened
        self.follow_links = follow_links
        self._state: FolderState | None = None
        self._plan: FolderPlan | None = None
        self._before: set[str] = set()
        self._removed = False

    def items(self, ctx: SourceContext) -> list[Item]:
        self._state = FolderState.for_index(ctx.state_dir, self.root, ctx.index_location)
        # What the index may hold for this folder: every id the state lists, and those a killed
        # run had still to delete. Taken now: each checkpoint rewrites the state.
        self._before = {seen.id for seen in self._state.files.values()} | self._state.removing
        self._plan = plan(self.root, self._state, ctx.indexed_ids, ctx.summary.skipped, follow_links=self.follow_links)
        ctx.summary.found = len(self._plan.stats)
        if self._plan.unchanged:
            ctx.summary.skipped["unchanged"] += len(self._plan.unchanged)
        return self._plan.items

    def checkpoint(self, done: Mapping[str, str]) -> None:
        # Until `removed` has handed them over for deletion, the ids of gone or changed files stay
        # in the state: a run killed after this save still deletes them next time.
        pending = set() if self._removed else stale_ids(self._before, self._plan, done)
        self._state.save(current_files(self._plan, done), pending)

    def removed(self, done: Mapping[str, str]) -> set[str]:
        self._removed = True  # deleted by the caller before its final save, whose checkpoint drops them
        return stale_ids(self._before, self._plan, done)
