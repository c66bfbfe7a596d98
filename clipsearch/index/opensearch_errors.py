"""OpenSearch client exceptions as the domain's errors, in one place for every OpenSearch module."""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, ContextManager

from clipsearch.errors import BackendUnavailable, ClipsearchError, IndexMissing

log = logging.getLogger("clipsearch.index.opensearch")
# What the index's helpers take to run a request: `translate_errors` bound to an index and URL.
Guard = Callable[[str], ContextManager[None]]
INGEST_HINT = ("`python -m ingest unsplash --backend opensearch` (or `python -m ingest folder PATH "
               "--backend opensearch`)")


def error_type(exc) -> str:
    info = getattr(exc, "info", None)
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        return str(info["error"].get("type", ""))
    return str(getattr(exc, "error", ""))


def reason(exc) -> str:
    info = getattr(exc, "info", None)
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        return str(info["error"].get("reason", ""))[:500]
    return str(info)[:500]


def status_of(exc) -> int:
    status = getattr(exc, "status_code", 0)
    return status if isinstance(status, int) else 0


@contextlib.contextmanager
def translate_errors(what: str, index: str, url: str):
    """OpenSearch client exceptions as the domain's errors, the cause logged. A 404 that is not a
    missing index (a missing document, alias or endpoint) is re-raised for the caller to decide."""
    from opensearchpy.exceptions import ConnectionError as OSConnectionError, TransportError

    try:
        yield
    except OSConnectionError as exc:
        log.error("OpenSearch %s at %s failed: %s", what, url, exc)
        raise BackendUnavailable(f"OpenSearch is unreachable ({what}): {type(exc).__name__}") from exc
    except TransportError as exc:
        status = status_of(exc)
        if status == 404 and error_type(exc) == "index_not_found_exception":
            raise IndexMissing(f"OpenSearch index {index!r} does not exist at {url}: create it with {INGEST_HINT}") \
                from exc
        if status in (401, 403):
            log.error("OpenSearch %s at %s refused: %s %s", what, url, status, exc.info)
            raise BackendUnavailable(f"OpenSearch refused the request ({status}): check OPENSEARCH_AUTH and the "
                                     "credentials' permissions") from exc
        if status == 429 or status >= 500 or status == 0:
            log.error("OpenSearch %s at %s failed: %s %s", what, url, status, exc.info)
            raise BackendUnavailable(f"OpenSearch answered {status or 'an error'} ({what})",
                                     retry_after=10 if status == 429 else 5) from exc
        if status == 404:  # a missing document: the caller decides
            raise
        # A request the cluster refuses (say, no k-NN plugin): not transient, not the client's input.
        log.error("OpenSearch %s at %s refused: %s %s", what, url, status, exc.info)
        raise ClipsearchError(f"OpenSearch refused {what} ({status} {error_type(exc)}): {reason(exc)}") from exc
