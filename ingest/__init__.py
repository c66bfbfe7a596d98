"""Ingest: photos from a source (Unsplash Lite, a local folder) into the k-NN index.

    ingest.run(source, settings, options) -> Summary      the library entry (ingest.api)
    python -m ingest unsplash|folder|generations          the command line (ingest.cli)

Layout: sources/ (where items come from: base.py's `Item` and `Source`), stages/ (read, cache,
decode, encode, write), runner.py (drives and times the stages), api.py (opens the model, the
index and the cache, and runs a source through the stages).
"""

from typing import Any

__all__ = ["IngestOptions", "Summary", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use: decode workers import this package too, and should start without
    # numpy's and the index's imports; so should `python -m ingest --help`.
    if name in __all__:
        from ingest import api

        return getattr(api, name)
    raise AttributeError(f"module 'ingest' has no attribute {name!r}")
