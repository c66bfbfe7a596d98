"""Domain errors. Each carries the data a caller needs; `server` maps them to HTTP in one place."""

from __future__ import annotations


class ClipsearchError(Exception):
    """Base class. `code` is the stable machine-readable name clients see."""

    code = "error"


class InvalidInput(ClipsearchError):
    code = "invalid_input"


class DocumentsRejected(InvalidInput):
    """Some documents of a write were refused, one reason each; the others were written.
    Ingest reports the refused ones as failed items and goes on."""

    code = "documents_rejected"

    def __init__(self, rejected: dict[str, str], written: int):
        self.rejected, self.written = dict(rejected), written
        first = "; ".join(f"{doc_id!r}: {why}" for doc_id, why in list(self.rejected.items())[:3])
        super().__init__(f"{len(self.rejected)} document(s) refused, {written} written ({first})")


class NotFound(ClipsearchError):
    code = "not_found"


class TooLarge(ClipsearchError):
    code = "too_large"


class ImageError(InvalidInput):
    """The bytes are not an image we can safely decode."""

    code = "invalid_image"


class ImageTooLarge(TooLarge):
    """Too many bytes, or too many pixels (a decompression bomb)."""

    code = "image_too_large"

    def __init__(self, what: str, size: int, limit: int):
        self.what, self.size, self.limit = what, size, limit
        super().__init__(f"image has {size:,} {what}, the limit is {limit:,}: send a smaller image")


class ModelMismatch(ClipsearchError):
    """The index was built by another model: its vectors are not comparable with ours."""

    code = "model_mismatch"

    def __init__(self, index_model: str, index_dim: int, model: str, dim: int):
        self.index_model, self.index_dim, self.model, self.dim = index_model, index_dim, model, dim
        super().__init__(
            f"the index was built with model {index_model!r} ({index_dim}-d) but the encoder is "
            f"{model!r} ({dim}-d): set MODEL_ID/MODEL_PATH to the index's model or re-ingest"
        )


class BackendUnavailable(ClipsearchError):
    """The k-NN backend cannot answer now; retrying later may work."""

    code = "backend_unavailable"

    def __init__(self, message: str, retry_after: int = 5):
        self.retry_after = retry_after
        super().__init__(message)


class IndexMissing(ClipsearchError):
    """No usable index at the configured location."""

    code = "index_missing"


class IndexCorrupt(IndexMissing):
    """The index is there but its files fail their checks (checksums, shapes, rows): serving it
    would give wrong answers. A kind of IndexMissing, so everything that handles a missing index
    (the server's 503 with Retry-After, ingest's error line) handles it too."""

    code = "index_corrupt"

    def __init__(self, file, problem: str, fix: str = "re-run the ingest that built it, or restore the directory"):
        self.file, self.problem = str(file), problem
        super().__init__(f"the index file {file} is damaged: {problem}; {fix}")


class IngestError(ClipsearchError):
    """A whole ingest run cannot go on (source unreachable, folder missing, cache in use).
    Single bad items are never this: they are skipped and reported."""

    code = "ingest_failed"
