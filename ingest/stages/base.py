"""What travels between the stages: one `Entry` per item, filled in as it goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ingest.sources.base import Item


@dataclass
class Entry:
    """An item on its way through the stages, with its settled document id."""

    item: Item
    doc_id: str
    data: bytes | None = None  # the file's bytes, until a decode worker has its copy
    crop: np.ndarray | None = None  # (H, W, 3) uint8 from the decode stage, until encoded
    extras: dict[str, Any] = field(default_factory=dict)  # facts from the pixels: width, height
    vector: np.ndarray | None = None  # from the encoder, the embedding cache or the index
    suspect: bool = False  # was in a chunk whose decode worker died


class ItemFailed(Exception):
    """A per-item stage could not handle this item; `reason` is "code: detail" for the summary."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


Failures = list[tuple[Entry, str]]  # what a batch stage could not handle, with the reason
