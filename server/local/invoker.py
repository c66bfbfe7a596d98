"""One invocation at a time of the Lambda emulator, whoever calls it.

The emulator runs one invocation at a time and crashes (a Go nil-pointer panic) when a second
arrives while one runs, so `Invoker` sends it one at a time: a function with a concurrency of one.
Every caller goes through the same `Invoker`: the gateway (gateway.py), and `InvokeFront`
(front.py), which serves the emulator's own invocation URL (port 9000) in front of it, so a
`curl` there while the front-end is searching waits its turn instead of crashing the emulator.
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import urlsplit


class Invoker:
    """Invokes the emulator one request at a time (it crashes on concurrent invocations).

    The single worker holds the emulator until it answers, even after the waiting caller gave
    up with a 504, so a timed-out request can never overlap the next one.
    """

    def __init__(self, invoke_url: str, call_timeout_s: float):
        self.invoke_url, self.call_timeout_s = invoke_url, call_timeout_s
        parts = urlsplit(invoke_url)
        self._address, self._path = (parts.hostname, parts.port or 80), parts.path or "/"
        self._conn: http.client.HTTPConnection | None = None  # kept alive; used by the one worker only
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="invoke")

    def submit(self, event: Any) -> Future:
        return self._pool.submit(self._post, event)

    def invoke(self, event: Any, timeout_s: float | None = None) -> Any:
        """The function's return value (JSON-decoded); raises TimeoutError past `timeout_s`.

        `event` is a JSON value, or its serialised bytes as they are to be sent."""
        future = self.submit(event)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: never send it
            raise TimeoutError(f"no answer within {timeout_s} s") from None

    def _post(self, event: Any) -> Any:
        return self._post_payload(event if isinstance(event, bytes) else json.dumps(event).encode())

    def _post_payload(self, payload: bytes) -> Any:
        status, _, body = self._post_raw(payload)
        if status != 200:
            raise OSError(f"the emulator answered {status}: {body[:300]!r}")
        return json.loads(body)

    def submit_raw(self, payload: bytes) -> Future:
        """Send `payload` as it is (a direct invocation); the future gives (status, content type, body)."""
        return self._pool.submit(self._post_raw, payload)

    def _post_raw(self, payload: bytes) -> tuple[int, str, bytes]:
        """One invocation over the kept-alive connection (a new TCP connection per call cost
        about half a millisecond); the emulator's own 4xx/5xx are passed on as they are."""
        try:
            return self._send(payload)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The emulator closed the idle kept-alive connection: once more, on a new one.
            return self._send(payload)

    def _send(self, payload: bytes) -> tuple[int, str, bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(*self._address, timeout=self.call_timeout_s)
        try:
            self._conn.request("POST", self._path, body=payload, headers={"Content-Type": "application/json"})
            resp = self._conn.getresponse()
            return resp.status, resp.getheader("Content-Type", "application/json"), resp.read()
        except BaseException:
            self._conn.close()  # in an unknown state: the next call connects afresh
            self._conn = None
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
