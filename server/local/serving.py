"""What the local gateway and the invocation front share: bounded HTTP servers that answer JSON."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from clipsearch.config import LAMBDA_PAYLOAD_BYTES

MAX_INVOKE_BYTES = LAMBDA_PAYLOAD_BYTES  # Lambda's limit for a synchronous invocation's payload
# Local plumbing, not API Gateway's: how long a connection may sit idle or trickle a request
# (a silent client must not hold a thread for ever), and how many may be open at once. Past the
# bound a new connection gets 429 at once, API Gateway's status for throttling (THROTTLED, in the
# table of "Gateway response types for API Gateway"; the template's stage throttles at 10
# requests/s, burst 20); the body's wording is ours.
SOCKET_TIMEOUT_S = 15.0
MAX_CONNECTIONS = 128
TOO_MANY = b'{"message": "Too Many Requests: the local gateway has too many open connections"}'
JSON = {"Content-Type": "application/json"}


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them, each socket op bounded by
    `socket_timeout_s`: 200 connections that never send a request hold 200 threads no longer."""

    daemon_threads = True
    # socketserver listens with a backlog of 5: a burst of connections beyond it waits a second
    # for the kernel's SYN retry before this server even sees it.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, *, socket_timeout_s: float, max_connections: int):
        super().__init__(address, handler)
        self.socket_timeout_s = socket_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: Any) -> None:
        """429 without reading anything (the accept loop must never wait on a client), then close."""
        head = (f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(TOO_MANY)}\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)  # a full send buffer drops the answer rather than blocking
            request.send(head + TOO_MANY)
        except OSError:
            pass
        self.shutdown_request(request)


class JsonHandler(BaseHTTPRequestHandler):
    """What the gateway and the invocation front share: HTTP/1.1 keep-alive, quiet, one reply,
    JSON whatever goes wrong (http.server's own errors are HTML pages)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client's delayed ACK
    # holds the second for ~40 ms on every request.
    disable_nagle_algorithm = True
    server: BoundedServer

    @property
    def timeout(self) -> float:  # read by StreamRequestHandler.setup for the connection's socket
        return self.server.socket_timeout_s

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the function logs every request; the local plumbing stays quiet

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's refusals (bad request line, header too long, unsupported version) as JSON."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # no request line parsed: still answer with a status line
            self.request_version = self.protocol_version
        body = json.dumps({"message": message or self.responses.get(code, ("error",))[0]}).encode()
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass  # the client is gone

    def __getattr__(self, name: str) -> Any:
        # http.server looks up do_<METHOD> and answers HTML 501 when there is none; every other
        # method gets the server's own JSON answer instead.
        if name.startswith("do_"):
            return self.other_method
        raise AttributeError(name)

    def other_method(self) -> None:
        raise NotImplementedError

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self, limit: int, too_large: bytes) -> bytes | None:
        """The request body, or None after answering 413 when it is over `limit`."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > limit:
            remaining = length if length <= 4 * limit else 0
            while remaining > 0:  # drain it, so the client reads our 413 rather than a broken pipe
                chunk = self.rfile.read(min(1 << 20, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
            self.close_connection = True
            self._reply(413, {"Content-Type": "application/json"}, too_large)
            return None
        return self.rfile.read(length) if length else b""
