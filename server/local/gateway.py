"""A local stand-in for API Gateway in front of the Lambda emulator.

`POST /search` and `OPTIONS /search` become REST (v1) proxy events; the function's proxy response
becomes the HTTP reply; past the timeout (29 s, as API Gateway) the caller gets 504 `{"message":
"Endpoint request timed out"}`; a function error or a non-proxy reply is a 502 `{"message":
"Internal server error"}`, as API Gateway answers. `GET /health` invokes the function's health
route. Requests over 10 MB (API Gateway's payload limit), or whose event is over Lambda's 6 MB
invocation limit, get 413 `{"message": "Request Too Long"}` without invoking the function.
It invokes through the shared one-at-a-time `Invoker` (invoker.py).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import parse_qs, urlsplit

from server.local.invoker import Invoker
from server.local.serving import JSON, MAX_CONNECTIONS, MAX_INVOKE_BYTES, SOCKET_TIMEOUT_S, BoundedServer, JsonHandler

API_GATEWAY_TIMEOUT_S = 29.0
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit (API Gateway quotas: "Payload size 10 MB")
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


class Gateway(BoundedServer):
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


class _GatewayHandler(JsonHandler):
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
