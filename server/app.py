"""The application behind the handler: routing, init-failure handling, one log line per request.

Built once per container (server/handler.py). If initialisation fails (no index, a model
mismatch, a model that cannot load, bad settings), the function does not crash-loop: every
request gets a 503 whose code and message say what is wrong and how to fix it, with
Retry-After, and initialisation is tried again at most every `retry_init_s` seconds, so a
local server started before the index existed recovers once ingest has run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError, IndexMissing, ModelMismatch
from server.errors import HttpError, ServiceUnavailable, to_http
from server.events import HttpRequest, cors_headers, parse_event, proxy_response, utf8_json
from server.fetch import SafeFetcher
from server.request import read_query
from server.result import SearchResult
from server.service import SearchService

RETRY_INIT_S = 10.0
TORCH_QUERY_THREADS = 1  # TORCH_THREADS unset, torch encoder: see query_threads
MAX_QUERY_THREADS = 4  # a 10-token query gains nothing measurable past this
LAMBDA_MB_PER_VCPU = 1769  # "at 1,769 MB, a function has the equivalent of one vCPU" (Lambda docs)

log = logging.getLogger("clipsearch.server")


def query_threads(encoder: str, env: dict[str, str] | None = None) -> int:
    """Intra-op threads for one query at a time when TORCH_THREADS is unset.

    torch: one. Its OpenMP workers spin, and on a busy 2-core host two threads took a text
    encode from 24 ms to 850 ms.
    ONNX Runtime: the whole vCPUs this function has. On Lambda that is its memory size over
    1,769 MB, whatever the vCPU count it shows; a second thread only pays with a second vCPU's
    quota behind it, as its workers spin between ops (models/onnx_encoder.py). A 10-token ViT-B/32
    encode is mostly matrix products (its time grows with the token count), which split well
    across cores: 11.1 ms on one thread, 6.7 ms on two (2 idle cores).
    """
    if encoder != "onnx":
        return TORCH_QUERY_THREADS
    env = os.environ if env is None else env
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        memory_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", ""))
    except ValueError:
        memory_mb = 0
    if memory_mb > 0:
        cpus = min(cpus, memory_mb // LAMBDA_MB_PER_VCPU)
    return max(1, min(cpus, MAX_QUERY_THREADS))


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (the runtime or a test may replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def _setup_logging() -> None:
    """JSON lines on stdout (CloudWatch under Lambda), whatever the runtime set up."""
    if not log.handlers:
        handler = _StdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def log_json(level: int, **fields: Any) -> None:
    log.log(level, utf8_json(fields, separators=(", ", ": ")))


class App:
    def __init__(self, settings: Settings | None, *, encoder=None, index=None, fetcher: SafeFetcher | None = None,
                 retry_init_s: float = RETRY_INIT_S, settings_error: Exception | None = None):
        _setup_logging()
        self.settings = settings or Settings()
        self._encoder, self._index, self._fetcher = encoder, index, fetcher
        self.retry_init_s = retry_init_s
        self.service: SearchService | None = None
        self.init_error: ClipsearchError | None = None
        self._settings_error = settings_error
        self._last_attempt = 0.0
        self._lock = threading.Lock()
        self.init_ms = self._init()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "App":
        """The container's app; bad settings become a 503 on every request, not an import crash."""
        try:
            return cls(Settings.from_env(env))
        except ValueError as exc:
            return cls(None, settings_error=exc)

    # -- initialisation --------------------------------------------------------------------
    def _init(self) -> float:
        t0 = time.perf_counter()
        self._last_attempt = time.monotonic()
        try:
            self.service = self._build()
            self.init_error = None
        except ClipsearchError as exc:
            self.init_error = exc
            log_json(logging.ERROR, event="init_failed", code=exc.code, message=str(exc))
        except Exception as exc:  # noqa: BLE001 - a model that cannot load must not crash-loop
            self.init_error = ServiceUnavailable("init_failed", f"the function could not start: {type(exc).__name__}: "
                                                 f"{str(exc)[:300]}")
            log_json(logging.ERROR, event="init_failed", code="init_failed", error=repr(exc),
                     traceback=traceback.format_exc())
        ms = (time.perf_counter() - t0) * 1000
        if self.service is not None:
            log_json(logging.INFO, event="init", ms=round(ms, 1), **self.service.health())
        return ms

    def _build(self) -> SearchService:
        from clipsearch.models import load_encoder
        from clipsearch.index import check_model

        if self._settings_error is not None:
            raise ServiceUnavailable("bad_configuration", f"the function's settings are invalid: {self._settings_error}")
        s = self.settings
        if s.model.threads is None:
            model = dataclasses.replace(s.model, threads=query_threads(s.model.encoder))
            s = self.settings = dataclasses.replace(s, model=model)
        # The index (an S3 copy, file reads, JSON parsing) loads in a thread while the encoder's
        # imports (torch, transformers: seconds of mostly CPU) run here: a shorter cold start.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="init-index") as pool:
            index = pool.submit(self._open_index, s) if self._index is None else None
            if self._encoder is None:
                self._encoder = load_encoder(s.model, load=("text", "vision") if s.model.preload_image_tower else ("text",))
            if index is not None:
                self._index = index.result()
        try:
            check_model(self._index, self._encoder.model_id, self._encoder.dim)
        except ModelMismatch:
            self._index = None  # re-open on the next attempt: ingest may have rebuilt it
            raise
        fetcher = self._fetcher or SafeFetcher(max_bytes=s.limits.max_image_bytes)
        return SearchService(self._encoder, self._index, s.limits, fetcher, threads=s.model.threads)

    @staticmethod
    def _open_index(s: Settings):
        from clipsearch.index import open_index

        if s.index.backend == "faiss" and s.index.s3_uri:
            from server.s3sync import discard, sync_index

            sync_index(s.index.s3_uri, s.index.path)
            try:
                return open_index(s.index, s.opensearch)
            except IndexMissing:  # IndexCorrupt included: the copy is damaged or inconsistent
                discard(s.index.path)  # the next attempt downloads it again rather than 503 for ever
                raise
        return open_index(s.index, s.opensearch)

    def _ready_service(self) -> SearchService:
        if self.service is None:
            with self._lock:
                if self.service is None and time.monotonic() - self._last_attempt >= self.retry_init_s:
                    self._init()
        if self.service is None:
            raise self.init_error or ServiceUnavailable("init_failed", "the function is not initialised")
        return self.service

    # -- requests --------------------------------------------------------------------------
    def handle(self, event: Any, context: Any = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        line: dict[str, Any] = {"request_id": getattr(context, "aws_request_id", None) or str(uuid.uuid4())}
        request: HttpRequest | None = None
        try:
            request = parse_event(event)
            line.update(source=request.source, method=request.method)
            status, body, headers = self._route(request, line)
        except Exception as exc:  # noqa: BLE001 - the one place errors become HTTP
            reply = to_http(exc)
            status, body, headers = reply.status, reply.body(), reply.headers
            line["error"] = reply.code
            if status >= 500 and not isinstance(exc, ClipsearchError):
                line["traceback"] = traceback.format_exc()
            elif status >= 500:
                line["message"] = str(exc)
        allowed = self.settings.server.cors_allow_origins
        if request is not None:
            headers = {**cors_headers(request.origin, allowed, preflight=request.method == "OPTIONS"), **headers}
        total_ms = (time.perf_counter() - t0) * 1000
        if isinstance(body, SearchResult):
            body = body.body(total_ms)  # parse and validation included in the total
            line.update(count=body["count"], took_ms=body["took_ms"], cached=body["cached"])
        line.update(status=status, ms=round(total_ms, 3))
        log_json(logging.ERROR if status >= 500 else logging.INFO, **line)
        return proxy_response(status, body, headers)

    def _route(self, request: HttpRequest, line: dict[str, Any]) -> tuple[int, SearchResult | dict | None,
                                                                            dict[str, str]]:
        if request.method == "OPTIONS":
            return 204, None, {}
        if request.method in ("GET", "HEAD") and request.path.rstrip("/").endswith("/health"):
            return 200, self._ready_service().health(), {}
        if request.method != "POST":
            raise HttpError(405, "method_not_allowed", f"{request.method} is not supported: POST a JSON search request",
                            {"Allow": "POST, OPTIONS"})
        query = read_query(request, self.settings.limits)
        line.update(input_type=query.input_type, k=query.k, filtered=bool(query.filters))
        if query.input_type == "text":
            line["chars"] = len(query.query)
        return 200, self._ready_service().search(query), {}
