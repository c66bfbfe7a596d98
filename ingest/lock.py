"""One ingest at a time per embedded index directory.

Each save writes a whole new generation from what that process holds in memory, so two ingests
writing one directory would each replace the other's documents with their own. An ingest holds
an exclusive flock on `<index>/ingest.lock` for its whole run. The kernel drops the lock when
its holder exits, even by kill -9, so a crashed run never blocks the next one; the file itself
stays, holding the pid of the last holder for the message.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import IO

from clipsearch.errors import IngestError

LOCK_FILE = "ingest.lock"


class IndexBusy(IngestError):
    """Another ingest is writing the index."""

    def __init__(self, index: Path, pid: str):
        self.index, self.pid = index, pid
        super().__init__(f"another ingest (pid {pid}) is writing {index}; wait for it or use --wait")


def lock_index(index: str | Path, *, wait: bool = False) -> IO[str]:
    """Hold the index directory's writer lock; returns the open lock file (close it to release).
    Raises IndexBusy when another process holds it, unless `wait`, which blocks until it is free."""
    index = Path(index)
    index.mkdir(parents=True, exist_ok=True)
    fh = open(index / LOCK_FILE, "a+")  # not "w": truncating before holding the lock would erase the holder's pid
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fh)
            if not wait:
                raise IndexBusy(index.resolve(), holder) from None
            print(f"ingest: another ingest (pid {holder}) is writing {index.resolve()}; waiting for it to finish",
                  file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        return fh
    except BaseException:
        fh.close()
        raise


def _holder(fh: IO[str]) -> str:
    fh.seek(0)
    pid = fh.read(32).strip()
    return pid if pid.isdigit() else "unknown"
