"""Errors to HTTP, in exactly one place.

Domain errors (clipsearch/errors.py) and the few protocol errors raised here become a status and
`{"error": {"code", "message"}}`. Anything else is a bug: `to_http` answers 500 `internal`
and the caller logs the traceback (the tests prove that no input reaches that branch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipsearch.errors import (
    BackendUnavailable,
    ClipsearchError,
    IndexMissing,
    InvalidInput,
    ModelMismatch,
    NotFound,
    TooLarge,
)


class HttpError(ClipsearchError):
    """A protocol-level refusal that has no domain meaning (wrong method, unknown route)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        self.status, self.code, self.headers = status, code, headers or {}
        super().__init__(message)


class ServiceUnavailable(ClipsearchError):
    """The function could not initialise (no index, model mismatch, model not loadable)."""

    def __init__(self, code: str, message: str, retry_after: int = 30):
        self.code, self.retry_after = code, retry_after
        super().__init__(message)


@dataclass(frozen=True)
class ErrorReply:
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


# Most specific first: ImageTooLarge is a TooLarge, ImageError an InvalidInput.
_STATUS: tuple[tuple[type[ClipsearchError], int], ...] = (
    (TooLarge, 413),
    (NotFound, 404),
    (InvalidInput, 400),
    (BackendUnavailable, 503),
    (IndexMissing, 503),
    (ModelMismatch, 503),
    (ServiceUnavailable, 503),
)


def to_http(exc: BaseException) -> ErrorReply:
    """The reply for `exc`; 500 `internal` (with no detail leaked) for anything unexpected."""
    if isinstance(exc, HttpError):
        return ErrorReply(exc.status, exc.code, str(exc), dict(exc.headers))
    if isinstance(exc, ClipsearchError):
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                headers = {}
                if status == 503:
                    headers["Retry-After"] = str(getattr(exc, "retry_after", None) or 30)
                return ErrorReply(status, exc.code, str(exc) or exc.code, headers)
    return ErrorReply(500, "internal", "internal error: the request id in the logs says what happened")
