"""What every source gives ingest, and what ingest tells it back.

A source turns where photos come from (a dataset it downloads, a folder it scans) into `Item`s:
a file to read, the document id when the source knows one, and the metadata the document
carries. Ingest runs the items through its stages and then calls the source's hooks: after each
index save (`checkpoint`, so the source can record its own state, never ahead of the index) and
once at the end (`removed`, the documents whose photo is gone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clipsearch.schema import display_text
from ingest.progress import Progress, Summary


@dataclass
class Item:
    """One image to ingest. `doc_id` None means content-addressed: the id is the sha256 of the
    file's bytes, and width/height/orientation/content_hash come from the file itself."""

    key: str  # identifies the item to its source: a file path or a photo id
    path: Path  # the file to read: a regular file (links resolved by the source)
    doc_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # what reports call it, when not `key` (printable, JSON-safe)

    @property
    def shown(self) -> str:
        return self.label if self.label is not None else display_text(self.key)


@dataclass
class SourceContext:
    """What a source may look at, and report to, while it finds its items."""

    indexed_ids: set[str]  # the documents the index holds as the run starts
    summary: Summary  # found, downloaded, skipped and failed are the source's to count
    progress: Progress
    state_dir: Path  # where a source keeps state between runs (under the cache directory)
    index_location: str  # names the target index, so state kept for one index is not used for another


class Source(Protocol):
    """A collection of photos, ingested by `ingest.run`."""

    name: str  # "unsplash", "folder": the summary's title
    stage: str  # what the summary calls the time `items` takes ("download", "scan")

    def items(self, ctx: SourceContext) -> Sequence[Item]:
        """What the run has to ingest (what the index already holds may be left out)."""
        ...

    def checkpoint(self, done: Mapping[str, str]) -> None:
        """The index was just saved holding `done` (item key -> document id) from this run."""
        ...

    def removed(self, done: Mapping[str, str]) -> set[str]:
        """Ids of documents to delete once the run is over (their photo is gone)."""
        ...
