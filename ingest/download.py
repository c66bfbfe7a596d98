"""HTTP downloads for ingest: retries with backoff, streaming to a temp file, atomic rename.

Transient trouble (timeouts, dropped connections, truncated bodies, 5xx, 429) is retried with
exponential backoff and jitter; a permanent answer (404, a body that is not what was asked for)
fails at once with a `DownloadFailed` naming the reason, which the caller records and skips.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "clipsearch-ingest/1.0 (+https://github.com/)"


class DownloadFailed(Exception):
    """A URL could not be fetched. `reason` is short and stable ("http_404", "not_an_image")."""

    def __init__(self, url: str, reason: str, detail: str = "", attempts: int = 1):
        self.url, self.reason, self.detail, self.attempts = url, reason, detail, attempts
        super().__init__(f"{reason}: {detail} ({url}, {attempts} attempt{'s' if attempts != 1 else ''})")


class _Retry(Exception):
    def __init__(self, reason: str, detail: str, wait: float | None = None):
        self.reason, self.detail, self.wait = reason, detail, wait


@dataclass(frozen=True)
class DownloadRetries:
    """How often a download is retried: a count of retries with exponential backoff and jitter."""

    retries: int = 4  # attempts after the first
    backoff: float = 0.5  # seconds before the first retry; doubles each time, plus jitter
    max_wait: float = 30.0
    timeout: float = 30.0  # connect and read timeout per attempt

    def wait(self, attempt: int) -> float:
        base = self.backoff * (2 ** attempt)
        return min(self.max_wait, base + random.uniform(0, self.backoff))


class Downloader:
    """Thread-safe: one requests.Session per thread (a Session is not safe to share)."""

    def __init__(self, policy: DownloadRetries = DownloadRetries()):
        self.policy = policy
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
        return session

    def download(
        self,
        url: str,
        dest: Path,
        *,
        max_bytes: int,
        check: Callable[[Path, str], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Download `url` to `dest` atomically; returns the size. `check(tmp_path, content_type)`
        raises DownloadFailed for a body that is complete but wrong (it is not retried)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        attempt = 0
        while True:
            try:
                size = self._attempt(url, tmp, max_bytes, check, on_bytes)
                os.replace(tmp, dest)
                return size
            except _Retry as exc:
                if attempt >= self.policy.retries:
                    raise DownloadFailed(url, exc.reason, exc.detail, attempt + 1) from None
                time.sleep(exc.wait if exc.wait is not None else self.policy.wait(attempt))
                attempt += 1
            except DownloadFailed as exc:
                exc.attempts = attempt + 1
                raise
            finally:
                tmp.unlink(missing_ok=True)

    def _attempt(self, url, tmp: Path, max_bytes: int, check, on_bytes) -> int:
        timeout = self.policy.timeout
        try:
            with self._session().get(url, stream=True, timeout=(timeout, timeout)) as resp:
                if resp.status_code in RETRYABLE_STATUS:
                    raise _Retry(f"http_{resp.status_code}", resp.reason or "", self._retry_after(resp))
                if resp.status_code != 200:
                    raise DownloadFailed(url, f"http_{resp.status_code}", resp.reason or "")
                declared = resp.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise DownloadFailed(url, "too_large", f"{int(declared):,} bytes, the limit is {max_bytes:,}")
                size = 0
                with open(tmp, "wb") as fh:
                    for block in resp.iter_content(chunk_size=256 * 1024):
                        size += len(block)
                        if size > max_bytes:
                            raise DownloadFailed(url, "too_large", f"more than {max_bytes:,} bytes")
                        fh.write(block)
                        if on_bytes is not None:
                            on_bytes(len(block))
                if declared is not None and declared.isdigit() and size != int(declared):
                    raise _Retry("truncated", f"got {size:,} of {int(declared):,} bytes")
                content_type = resp.headers.get("Content-Type", "")
        except requests.Timeout as exc:
            raise _Retry("timeout", str(exc) or "timed out") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            # A body cut short (fewer bytes than Content-Length) surfaces here too.
            raise _Retry("connection", str(exc)[:200]) from None
        if check is not None:
            check(tmp, content_type)
        return size

    def _retry_after(self, resp: requests.Response) -> float | None:
        raw = resp.headers.get("Retry-After", "")
        if raw.strip().isdigit():
            return min(float(raw), self.policy.max_wait)
        return None
