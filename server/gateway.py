"""A local stand-in for API Gateway in front of the Lambda emulator.

`POST /search` and `OPTIONS /search` become REST (v1) proxy events; the function's proxy response
becomes the HTTP reply; past the timeout (29 s, as API Gateway) the caller gets 504 `{"message":
"Endpoint request timed out"}`; a function error or a non-proxy reply is a 502 `{"message":
"Internal server error"}`, as API Gateway answers. `GET /health` invokes the function's health
route. Requests over 10 MB (API Gateway's payload limit), or whose event is over Lambda's 6 MB
invocation limit, get 413 `{"message": "Request Too Long"}` without invoking the function.

The emulator runs one invocation at a time and crashes (a Go nil-pointer panic) when a second
arrives while one runs, so `Invoker` sends it one at a time: a function with a concurrency of one.
Every caller goes through the same `Invoker`: the gateway, and `InvokeFront`, which serves the
emulator's own invocation URL (port 9000) in front of it, so a `curl` there while the front-end
is searching waits its turn instead of crashing the emulator.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clipsearch.config import LAMBDA_PAYLOAD_BYTES

API_GATEWAY_TIMEOUT_S = 29.0
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit (API Gateway quotas: "Payload size 10 MB")
MAX_INVOKE_BYTES = LAMBDA_PAYLOAD_BYTES  # Lambda's limit for a synchronous invocation's payload
# What a REST API answered when the Lambda proxy event was over Lambda's payload limit: 413,
# application/json, this body (observed against a deployed API, koki-develop/lgtm-generator#10;
# the AWS documentation does not say). The function never runs, so no project error can be sent.
TOO_LONG = b'{"message": "Request Too Long"}'
# A method or resource the API does not define: API Gateway's MISSING_AUTHENTICATION_TOKEN, 403,
# "including the cases when the client attempts to invoke an unsupported API method or resource"
# (developer guide, "Gateway response types for API Gateway"; awsdocs/amazon-api-gateway-developer-guide
# doc_source/supported-gateway-response-types.md). infra/template.yaml defines POST and OPTIONS
# on /search only, so PUT /search or POST /other get this, never reaching the function.
MISSING_TOKEN = b'{"message": "Missing Authentication Token"}'
# Local plumbing, not API Gateway's: how long a connection may sit idle or trickle a request
# (a silent client must not hold a thread for ever), and how many may be open at once. Past the
# bound a new connection gets 429 at once, API Gateway's status for throttling (THROTTLED, in the
# same table; the template's stage throttles at 10 requests/s, burst 20); the body's wording is ours.
SOCKET_TIMEOUT_S = 15.0
MAX_CONNECTIONS = 128
TOO_MANY = b'{"message": "Too Many Requests: the local gateway has too many open connections"}'
JSON = {"Content-Type": "application/json"}
BINARY_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")  # as the template declares


def rest_event(method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str) -> dict[str, Any]:
    """An API Gateway REST (v1) proxy event, as the deployed API would send it."""
    parts = urlsplit(target)
    multi = parse_qs(parts.query, keep_blank_values=True)
    ctype = headers.get("content-type", headers.get("Content-Type", "")).split(";")[0].strip().lower()
    binary = ctype in BINARY_MEDIA_TYPES
    try:
        text = None if binary else body.decode("utf-8")
    except UnicodeDecodeError:
        text = None  # not text: deliver it base64-encoded rather than mangled
    request_id = str(uuid.uuid4())
    return {
        "resource": parts.path, "path": parts.path, "httpMethod": method,
        "headers": dict(headers), "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": None, "stageVariables": None,
        "requestContext": {"resourcePath": parts.path, "httpMethod": method, "path": "/local" + parts.path,
                           "stage": "local", "requestId": request_id, "requestTimeEpoch": int(time.time() * 1000),
                           "identity": {"sourceIp": source_ip}},
        "body": (text if text is not None else base64.b64encode(body).decode("ascii")) if body else None,
        "isBase64Encoded": bool(body) and text is None,
    }


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


class _BoundedServer(ThreadingHTTPServer):
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


class Gateway(_BoundedServer):
    """`POST /search` and `OPTIONS /search` as proxy events; `GET /health`; API Gateway's 504."""

    def __init__(self, address: tuple[str, int], invoker: Invoker, timeout_s: float = API_GATEWAY_TIMEOUT_S, *,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        super().__init__(address, _GatewayHandler, socket_timeout_s=socket_timeout_s, max_connections=max_connections)
        self.invoker, self.timeout_s = invoker, timeout_s
        self._health: Future | None = None
        self._health_lock = threading.Lock()

    def forward(self, event: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        payload = json.dumps(event).encode()
        if len(payload) > MAX_INVOKE_BYTES:  # Lambda would refuse the invocation: the function never sees it
            return 413, {"Content-Type": "application/json"}, TOO_LONG
        try:
            out = self.invoker.invoke(payload, self.timeout_s)
        except TimeoutError:
            return 504, {"Content-Type": "application/json"}, b'{"message": "Endpoint request timed out"}'
        except (OSError, ValueError) as exc:  # emulator down, or not JSON
            return _bad_gateway(f"the emulator did not answer: {exc}")
        return proxy_reply(out)

    def health(self, event: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """Coalesced: many pollers share one in-flight health invocation."""
        with self._health_lock:
            if self._health is None or self._health.done():
                self._health = self.invoker.submit(event)
            future = self._health
        try:
            return proxy_reply(future.result(timeout=self.timeout_s))
        except FutureTimeout:
            return 503, {"Content-Type": "application/json"}, b'{"message": "the function is still starting"}'
        except (OSError, ValueError) as exc:
            return 503, {"Content-Type": "application/json"}, json.dumps({"message": f"the emulator is not answering: {exc}"}).encode()


def _bad_gateway(why: str) -> tuple[int, dict[str, str], bytes]:
    # What API Gateway answers when the function fails or returns a malformed proxy response.
    return 502, {"Content-Type": "application/json", "X-Local-Gateway-Reason": why[:200].replace("\n", " ")}, \
        b'{"message": "Internal server error"}'


def proxy_reply(out: Any) -> tuple[int, dict[str, str], bytes]:
    """The HTTP reply API Gateway builds from a proxy response; 502 for anything else."""
    if not isinstance(out, dict) or not isinstance(out.get("statusCode"), int):
        kind = out.get("errorType") if isinstance(out, dict) else type(out).__name__
        return _bad_gateway(f"the function did not return a proxy response ({kind})")
    headers = {str(k): str(v) for k, v in (out.get("headers") or {}).items()}
    body = out.get("body") or ""
    data = base64.b64decode(body) if out.get("isBase64Encoded") else str(body).encode("utf-8")
    return out["statusCode"], headers, data


class _Handler(BaseHTTPRequestHandler):
    """What the gateway and the invocation front share: HTTP/1.1 keep-alive, quiet, one reply,
    JSON whatever goes wrong (http.server's own errors are HTML pages)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client's delayed ACK
    # holds the second for ~40 ms on every request.
    disable_nagle_algorithm = True
    server: _BoundedServer

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


class InvokeFront(_BoundedServer):
    """The emulator's invocation URL, served in front of it: callers queue on the shared `Invoker`.

    Payloads pass through untouched (a malformed one reaches the runtime, which answers as it
    would on Lambda); only the size limit of a synchronous invocation is checked here. Other
    methods get 405 and other paths 404, as JSON (the emulator itself invokes on any method and
    answers Go's text 404 elsewhere; what Lambda's Invoke API answers to a GET was not checked).
    """

    def __init__(self, address: tuple[str, int], invoker: Invoker, timeout_s: float, *,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        super().__init__(address, _InvokeHandler, socket_timeout_s=socket_timeout_s, max_connections=max_connections)
        self.invoker, self.timeout_s = invoker, timeout_s


class _InvokeHandler(_Handler):
    server: InvokeFront

    def _is_invocation_path(self) -> bool:
        parts = urlsplit(self.path).path.strip("/").split("/")
        return len(parts) == 4 and parts[:2] == ["2015-03-31", "functions"] and parts[3] == "invocations"

    def other_method(self) -> None:
        if not self._is_invocation_path():
            return self._reply(404, JSON, b'{"message": "POST /2015-03-31/functions/function/invocations"}')
        self.close_connection = True  # any body is left unread
        self._reply(405, {**JSON, "Allow": "POST"}, json.dumps(
            {"message": f"{self.command} is not an invocation: POST the event to this URL"}).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if not self._is_invocation_path():
            self.close_connection = True  # any body is left unread
            return self._reply(404, JSON, b'{"message": "POST /2015-03-31/functions/function/invocations"}')
        payload = self._read_body(MAX_INVOKE_BYTES, json.dumps({
            "Type": "User", "message": f"Request must be smaller than {MAX_INVOKE_BYTES} bytes for the "
                                       "InvokeFunction operation"}).encode())
        if payload is None:
            return
        future = self.server.invoker.submit_raw(payload)
        try:
            status, ctype, body = future.result(timeout=self.server.timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued behind a long invocation: never send it
            return self._reply(504, JSON, b'{"message": "the function did not answer in time"}')
        except OSError as exc:
            return self._reply(502, JSON, json.dumps({"message": f"the emulator did not answer: {exc}"}).encode())
        self._reply(status, {"Content-Type": ctype}, body)


class _GatewayHandler(_Handler):
    server: Gateway

    def _event(self, method: str, body: bytes = b"") -> dict[str, Any]:
        return rest_event(method, self.path, {k: v for k, v in self.headers.items()}, body, self.client_address[0])

    def _route(self) -> str | None:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def other_method(self) -> None:
        """A method or path the deployed API does not define (see MISSING_TOKEN)."""
        self._skip_body()
        self._reply(403, JSON, MISSING_TOKEN)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self._route() != "/search":
            return self.other_method()
        # Over 10 MB: API Gateway's REQUEST_TOO_LARGE (413). Its body for a regional REST API is not
        # documented (an edge-optimized one answered text through CloudFront, in the issue above).
        body = self._read_body(MAX_REQUEST_BYTES, TOO_LONG)
        if body is not None:
            self._reply(*self.server.forward(self._event("POST", body)))

    def do_OPTIONS(self) -> None:  # noqa: N802
        if self._route() != "/search":
            return self.other_method()
        self._reply(*self.server.forward(self._event("OPTIONS")))

    def do_GET(self) -> None:  # noqa: N802
        # GET /health is the local gateway's own (the deployed API has no such route): it asks the
        # function whether it is initialised, for `make demo` and the tests to wait on.
        if self._route() != "/health":
            return self.other_method()
        self._reply(*self.server.health(self._event("GET")))

    do_HEAD = do_GET

    def _skip_body(self) -> None:
        """Read and drop a small body so the connection stays usable; close it after a large one."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 < length <= 1 << 16:
            self.rfile.read(length)
        elif length:
            self.close_connection = True
