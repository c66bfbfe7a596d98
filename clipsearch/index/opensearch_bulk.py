"""Bulk writes that survive a busy cluster.

Actions are cut into requests of at most `max_docs` actions and `max_bytes` of NDJSON, sent by a
small thread pool. A whole request that fails transiently (connection dropped, timeout, 429,
502-504) is sent again; when the request succeeds but some items fail with 429/503 (a full write
queue on one shard), only those items are sent again. Waits grow exponentially with jitter.

Requests go to `/{index}/_bulk` and the action lines never name an index: Amazon OpenSearch
Service authorises a request by its URL, so only an index-scoped path lets the ingest role's
policy limit what a bulk request can write (with the domain's `rest.action.multi.allow_explicit_index`
set to false, a body naming another index is refused; developer guide, "Advanced options and API
considerations").

With a document id fixed by the caller (managed clusters), sending an `index` action twice leaves
one document. Without one (Serverless assigns ids), a request re-sent after a dropped connection
may have been applied already: the caller removes such duplicates (opensearch_load.settle).
"""

from __future__ import annotations

import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from clipsearch.errors import BackendUnavailable

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset((429, 502, 503, 504))


@dataclass
class Action:
    """One bulk action: its metadata line and, for index actions, the document line."""

    op: str  # "index" | "delete"
    key: str  # the document id reports name
    id: str | None = None  # the `_id` sent; None: the cluster assigns one (index actions only)
    source: dict | None = None
    lines: bytes = b""
    seq: int = -1  # position in the request list, set by BulkWriter.run

    def __post_init__(self):
        meta = json.dumps({self.op: {} if self.id is None else {"_id": self.id}}, ensure_ascii=False)
        body = "" if self.source is None else json.dumps(self.source, ensure_ascii=False, allow_nan=False) + "\n"
        self.lines = (meta + "\n" + body).encode("utf-8")


@dataclass
class BulkResult:
    ok: dict[int, int] = field(default_factory=dict)  # action seq -> HTTP status of the final attempt
    errors: dict[int, str] = field(default_factory=dict)  # action seq -> reason, for permanent failures
    retries: int = 0


def chunks(actions: list[Action], max_docs: int, max_bytes: int) -> list[list[Action]]:
    out: list[list[Action]] = []
    cur: list[Action] = []
    size = 0
    for a in actions:
        if cur and (len(cur) >= max_docs or size + len(a.lines) > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(a)
        size += len(a.lines)
    if cur:
        out.append(cur)
    return out


class BulkWriter:
    def __init__(self, client, *, max_docs: int = 500, max_bytes: int = 5 * 1024 * 1024, threads: int = 2,
                 max_attempts: int = 8, backoff: float = 0.5, max_backoff: float = 30.0,
                 request_timeout: float = 60.0):
        self.client = client
        self.max_docs, self.max_bytes, self.threads = max_docs, max_bytes, threads
        self.max_attempts, self.backoff, self.max_backoff = max_attempts, backoff, max_backoff
        self.request_timeout = request_timeout

    def run(self, index: str, actions: Iterable[Action]) -> BulkResult:
        """Write `actions` into `index`; the result names actions by their position in the list."""
        result = BulkResult()
        todo = list(actions)
        for seq, action in enumerate(todo):
            action.seq = seq
        parts = chunks(todo, self.max_docs, self.max_bytes)
        if not parts:
            return result
        with ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(parts)))) as pool:
            for part in pool.map(lambda part: self._send_chunk(index, part), parts):
                result.ok.update(part.ok)
                result.errors.update(part.errors)
                result.retries += part.retries
        return result

    def _sleep(self, attempt: int) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt)
        time.sleep(delay * (0.5 + random.random() / 2))

    def _send_chunk(self, index: str, pending: list[Action]) -> BulkResult:
        from opensearchpy.exceptions import ConnectionError as OSConnectionError, TransportError

        result = BulkResult()
        last_cause = ""
        for attempt in range(self.max_attempts):
            if attempt:
                result.retries += 1
                self._sleep(attempt - 1)
            body = b"".join(action.lines for action in pending)
            try:
                resp = self.client.bulk(body=body, index=index, params={"request_timeout": self.request_timeout})
            except OSConnectionError as exc:  # dropped connection, timeout, TLS: send it all again
                last_cause = f"{type(exc).__name__}: {exc}"
                log.warning("bulk request of %d actions failed (%s), retrying", len(pending), last_cause)
                continue
            except TransportError as exc:
                if isinstance(exc.status_code, int) and exc.status_code in RETRY_STATUSES:
                    last_cause = f"HTTP {exc.status_code}: {exc.error}"
                    log.warning("bulk request of %d actions got %s, retrying", len(pending), last_cause)
                    continue
                raise
            if len(resp.get("items", [])) != len(pending):
                raise BackendUnavailable(f"bulk response had {len(resp.get('items', []))} items for {len(pending)} actions")
            retry: list[Action] = []
            for action, item in zip(pending, resp["items"]):
                outcome = item.get(action.op, {})
                status = int(outcome.get("status", 500))
                if status in RETRY_STATUSES:
                    retry.append(action)
                    last_cause = f"item HTTP {status}: {_reason(outcome)}"
                elif status < 300 or (action.op == "delete" and status == 404):
                    result.ok[action.seq] = status
                else:
                    result.errors[action.seq] = f"HTTP {status}: {_reason(outcome)}"
            if not retry:
                return result
            log.info("bulk: %d of %d items rejected transiently (%s), re-sending those", len(retry), len(pending), last_cause)
            pending = retry
        raise BackendUnavailable(f"OpenSearch bulk write still failing after {self.max_attempts} attempts "
                                 f"({len(pending)} documents not written): {last_cause}")


def _reason(outcome: dict[str, Any]) -> str:
    err = outcome.get("error")
    if isinstance(err, dict):
        return f"{err.get('type')}: {err.get('reason')}"
    return str(err)
