"""The write stage: documents into the index, a batch at a time; and the checkpoint that saves it.

Documents are upserted by id, so a rerun or a resumed run never writes one twice. What the index
refuses (an id or metadata it cannot hold) fails that document alone; the others are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from clipsearch.errors import DocumentsRejected, InvalidInput
from clipsearch.index import Document, VectorIndex
from clipsearch.schema import orientation
from ingest.sources.base import Item
from ingest.stages.base import Entry


def document_metadata(item: Item, doc_id: str, extras: Mapping[str, Any]) -> dict[str, Any]:
    """The source's metadata; a content-addressed item adds what its file says about itself."""
    meta = dict(item.metadata)
    if item.doc_id is None:  # content-addressed: the file is the only source of facts
        meta["content_hash"] = doc_id
        w, h = extras.get("width"), extras.get("height")
        if w and h:
            meta.update(width=int(w), height=int(h), orientation=orientation(int(w), int(h)))
    return meta


@dataclass
class Written:
    """One write into the index."""

    indexed: int = 0  # documents the index took
    handled: int = 0  # documents tried
    failed: list[tuple[Item, str]] = field(default_factory=list)


class WriteStage:
    """`add` entries with their vectors; calling the stage writes what waits. `done` maps each
    written item's key to its document id; `batches` counts the writes."""

    def __init__(self, index: VectorIndex):
        self.index = index
        self.done: dict[str, str] = {}
        self.batches = 0
        self._waiting: list[tuple[Item, Document]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def add(self, entry: Entry) -> None:
        # Only the item and its document are kept: the file's bytes and the crop are let go.
        meta = document_metadata(entry.item, entry.doc_id, entry.extras)
        self._waiting.append((entry.item, Document(entry.doc_id, entry.vector, meta)))

    def duplicate(self, entry: Entry) -> None:
        """Another item of this run has the same bytes: this one's key names that document too."""
        self.done[entry.item.key] = entry.doc_id

    def __call__(self) -> Written:
        ready, self._waiting = self._waiting, []
        out = Written(handled=len(ready))
        if not ready:
            return out
        rejected: dict[str, str] = {}
        try:
            out.indexed = self.index.upsert([doc for _, doc in ready])
        except DocumentsRejected as exc:  # the others are written: report these, go on
            out.indexed, rejected = exc.written, exc.rejected
        except InvalidInput:  # a document the index refuses before writing any: write the others one by one
            ready = self._one_by_one(ready, out)
        for item, doc in ready:
            if doc.id in rejected:
                out.failed.append((item, f"rejected_by_index: {rejected[doc.id]}"))
            else:
                self.done[item.key] = doc.id
        self.batches += 1
        return out

    def _one_by_one(self, ready: list[tuple[Item, Document]], out: Written) -> list[tuple[Item, Document]]:
        written = []
        for item, doc in ready:
            try:
                out.indexed += self.index.upsert([doc])
                written.append((item, doc))
            except InvalidInput as exc:
                out.failed.append((item, f"invalid_document: {exc}"))
        return written


class Checkpoint:
    """The resume point: the index is saved every `every` written batches, then the source is
    told what the saved index holds (so its own state never runs ahead of the index)."""

    def __init__(self, index: VectorIndex, every: int, on_save: Callable[[dict[str, str]], None] | None = None):
        self.index, self.every, self.on_save = index, max(1, every), on_save
        self._saved_at = 0

    def due(self, batches: int) -> bool:
        return batches - self._saved_at >= self.every

    def __call__(self, batches: int, done: Mapping[str, str]) -> None:
        self._saved_at = batches
        self.index.save()
        if self.on_save is not None:
            self.on_save(dict(done))
