"""The read stage: a file's bytes and its document id, without trusting what the file has become."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from clipsearch.errors import ImageTooLarge
from clipsearch.index.base import id_problem
from ingest.sources.base import Item
from ingest.stages.base import Entry, ItemFailed


class NotRegularFile(OSError):
    """What was scanned as a file is something else now (a FIFO, a device, a directory)."""


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` (ImageTooLarge beyond).

    Opened without following a final symbolic link (sources hand over resolved paths: a link
    swapped in since the scan is refused, not followed) and without blocking (a FIFO swapped in
    would otherwise hang the run), then checked to be a regular file before a byte is read. The
    read stops at `max_bytes` + 1 whatever the size says: files such as /proc's report 0."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file (FIFO, device, socket or directory)")
        if st.st_size > max_bytes:
            raise ImageTooLarge("bytes", st.st_size, max_bytes)
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge("bytes", len(data), max_bytes)
    return data


def reread(path: Path, max_bytes: int) -> bytes:
    """The file's bytes again (a decode worker died holding them); empty when it is gone or
    changed, which decoding then reports."""
    try:
        return read_regular_file(path, max_bytes)
    except (OSError, ImageTooLarge):
        return b""


class ReadStage:
    """item -> Entry with the file's bytes and the document id: the source's, or for a
    content-addressed item the sha256 of the bytes. Raises ItemFailed for a file that cannot
    be read or is too large, and for an id no index can hold."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def __call__(self, item: Item) -> Entry:
        try:
            data = read_regular_file(item.path, self.max_bytes)
        except ImageTooLarge as exc:
            raise ItemFailed(f"{exc.code}: {exc}") from None
        except OSError as exc:
            raise ItemFailed(f"unreadable: {exc.strerror or exc}") from None
        doc_id = item.doc_id or hashlib.sha256(data).hexdigest()
        problem = id_problem(doc_id)
        if problem is not None:  # a source's id no index can hold (say, over 512 bytes)
            raise ItemFailed(f"bad_id: {problem}")
        return Entry(item, doc_id, data)
