"""The search API client, with the retry budget that rides out Lambda cold starts.

What is retried, and why:
- 504: API Gateway gives up on a Lambda after 29 s, which a cold start (model load) can exceed;
  the warm instance it leaves behind answers the next attempt. 503 (the backend says "not now",
  with Retry-After) and 429 (throttled) are likewise worth another try.
- Never a 4xx other than 429: the request itself is wrong, and the API's message says what to fix.
- A connection error (refused, reset) gets ONE quick retry after half a second: that covers a
  gateway that is restarting, while a server that is down is reported at once, not after 90 s.
- A timeout is not retried: the gateway always answers within 29 s, so silence past the read
  timeout means nothing is answering at that address.

Waits use exponential backoff with full jitter (uniform in [0, min(cap, base * 2**n)]), or the
server's Retry-After when it sends one, and stop when the next attempt would start after the total
budget. The budget bounds when an attempt may start; one attempt may still run up to its read
timeout past it.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

from clipsearch.errors import ClipsearchError

RETRY_STATUSES = frozenset({429, 503, 504})


@dataclass(frozen=True)
class RetryBudget:
    """How long a search keeps being retried while a cold Lambda warms up: bounded by time, not by
    a count of attempts (ingest's downloads have DownloadRetries, a count, instead)."""

    budget_s: float = 90.0
    base_delay_s: float = 1.0
    max_delay_s: float = 10.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 35.0  # API Gateway cuts at 29 s: leave it room to send its 504
    reconnect_delay_s: float = 0.5  # the single retry after a refused or reset connection

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(retry-1))] for retry 1, 2, ..."""
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1)))


@dataclass(frozen=True)
class SearchRequest:
    query: str
    input_type: str = "text"
    k: int = 12
    filters: dict[str, Any] = field(default_factory=dict)
    min_score: float | None = None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"query": self.query, "input_type": self.input_type, "k": self.k}
        if self.filters:
            body["filters"] = dict(self.filters)
        if self.min_score is not None:
            body["min_score"] = self.min_score
        return body


@dataclass(frozen=True)
class SearchResponse:
    results: list[dict[str, Any]]
    model: str | None
    took_ms: dict[str, float]
    attempts: int = 1
    elapsed_s: float = 0.0
    warning: str | None = None  # the API's, e.g. a random-weight stand-in model
    cached: bool = False  # the API answered from its text-embedding cache: no encode happened


class SearchFailed(ClipsearchError):
    """A search that produced no results; str() is the message to show the user."""

    code = "search_failed"


class ApiError(SearchFailed):
    """The API answered with an error that retrying will not fix (a 4xx, a 500, a bad body)."""

    code = "api_error"

    def __init__(self, status: int, message: str, error_code: str | None = None):
        self.status, self.message, self.error_code = status, message, error_code
        if 400 <= status < 500:
            what = f"refused the request (HTTP {status})"
        elif status >= 500:
            what = f"failed (HTTP {status})"
        else:
            what = f"sent an answer this page cannot read (HTTP {status})"
        hint = " Check CLIPSEARCH_API_KEY (sent as x-api-key)." if status in (401, 403) else ""
        super().__init__(f"The search API {what}: {message}{hint}")


class ApiUnavailable(SearchFailed):
    """Still 504/503/429 when the retry budget ran out."""

    code = "api_unavailable"

    def __init__(self, status: int, message: str, attempts: int, elapsed_s: float, why: str):
        self.status, self.message, self.attempts, self.elapsed_s = status, message, attempts, elapsed_s
        super().__init__(
            f"The search service is still not answering (HTTP {status}: {message}) after "
            f"{attempts} attempt{'s' if attempts != 1 else ''} over {elapsed_s:.0f} s; {why}. "
            "Try again in a minute."
        )


class Unreachable(SearchFailed):
    """Nothing answered at the configured URL."""

    code = "unreachable"

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(
            f"The search API is unreachable at {url}: {reason}. Is the server running "
            "(`make demo` starts it)? Set CLIPSEARCH_API_URL to where it listens."
        )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_message(resp: requests.Response) -> tuple[str, str | None]:
    """(message, code) from the API's `{"error": {...}}`, the gateway's `{"message"}`, or text."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]), (str(err["code"]) if err.get("code") else None)
        if body.get("message"):
            return str(body["message"]), None
    if "html" in resp.headers.get("Content-Type", "").lower() or resp.text.lstrip()[:15].lower().startswith(
            ("<!doctype html", "<html")):
        # Not our API (it answers JSON, errors included): another program holds that address.
        return (f"{resp.url} answered with an HTML page, not the search API's JSON: is another program listening "
                "there? Set CLIPSEARCH_API_URL to where the API listens"), None
    text = " ".join(resp.text.split())[:200]
    return text or (resp.reason or "no message"), None


# Called before each wait: (the attempt about to be made, seconds to wait, why we wait).
OnWait = Callable[[int, float, str], None]


class SearchClient:
    """POSTs searches to the API; one per user session (it owns a requests.Session)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        policy: RetryBudget = RetryBudget(),
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.url, self.policy = url, policy
        self.session = session or requests.Session()
        self.headers = {"x-api-key": api_key} if api_key else {}
        self.clock, self.sleep = clock, sleep
        self.rng = rng or random.Random()

    def search(self, request: SearchRequest, on_wait: OnWait | None = None) -> SearchResponse:
        payload = request.payload()
        start = self.clock()
        attempt, reconnected = 0, False
        while True:
            attempt += 1
            try:
                resp = self._post(payload)
            except requests.ConnectionError as exc:
                if reconnected:
                    raise Unreachable(self.url, _connection_reason(exc)) from None
                reconnected = True
                self._wait(attempt + 1, self.policy.reconnect_delay_s, "connection failed", on_wait)
                continue
            elapsed = self.clock() - start
            if resp.status_code == 200:
                return self._parse(resp, attempt, elapsed)
            message, code = error_message(resp)
            if resp.status_code not in RETRY_STATUSES:
                raise ApiError(resp.status_code, message, code)
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            delay = retry_after if retry_after is not None else self.policy.backoff(attempt, self.rng)
            if elapsed + delay >= self.policy.budget_s:
                why = (f"it asked to wait {retry_after:.0f} s more" if retry_after is not None
                       else f"the {self.policy.budget_s:.0f} s retry budget is spent")
                raise ApiUnavailable(resp.status_code, message, attempt, elapsed, why)
            self._wait(attempt + 1, delay, f"HTTP {resp.status_code}", on_wait)

    def _post(self, payload: dict[str, Any]) -> requests.Response:
        timeout = (self.policy.connect_timeout_s, self.policy.read_timeout_s)
        try:
            return self.session.post(self.url, json=payload, headers=self.headers, timeout=timeout)
        except requests.ConnectTimeout:
            raise Unreachable(self.url, f"no connection within {self.policy.connect_timeout_s:.0f} s") from None
        except requests.ReadTimeout:
            raise Unreachable(self.url, f"connected, but no answer within {self.policy.read_timeout_s:.0f} s") from None
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                requests.exceptions.InvalidURL) as exc:
            raise Unreachable(self.url, f"not a valid http(s) URL ({exc})") from None

    def _wait(self, next_attempt: int, delay: float, why: str, on_wait: OnWait | None) -> None:
        if on_wait is not None:
            on_wait(next_attempt, delay, why)
        self.sleep(delay)

    def _parse(self, resp: requests.Response, attempts: int, elapsed: float) -> SearchResponse:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise ApiError(200, "the answer is not a search result (no \"results\" list)")
        results = [r for r in body["results"] if isinstance(r, dict) and "id" in r]
        took = body.get("took_ms") if isinstance(body.get("took_ms"), dict) else {}
        warning = body.get("warning") if isinstance(body.get("warning"), str) else None
        return SearchResponse(results, body.get("model"), took, attempts, elapsed, warning[:500] if warning else None,
                              cached=body.get("cached") is True)


def _connection_reason(exc: requests.ConnectionError) -> str:
    text = str(exc)
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "Temporary failure in name resolution" in text:
        return "the host name does not resolve"
    if "reset" in text.lower() or "aborted" in text.lower():
        return "the connection was dropped"
    return f"connection failed ({text[:160]})"
