"""Lambda events in, proxy responses out.

Three shapes arrive: a direct invocation (the event *is* the JSON body, as the emulator's curl
sends it), an API Gateway REST (v1) proxy event and an HTTP API (v2) proxy event. They become one
`HttpRequest`; every reply is the proxy shape (`statusCode`, `headers`, `body`), which API
Gateway needs and a direct caller reads the same way (DESIGN.md, "The API contract").
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from clipsearch.errors import InvalidInput, TooLarge
from server.errors import HttpError

_NO_PAYLOAD = object()
PREFLIGHT_MAX_AGE_S = 600
ALLOWED_HEADERS = "content-type, x-api-key"


@dataclass(frozen=True)
class HttpRequest:
    source: str  # "direct" | "rest" | "http"
    method: str  # upper case
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    query: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # proxy events: the raw body, base64 already undone
    payload: Any = _NO_PAYLOAD  # direct invocation: the already-parsed event

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json_body(self, max_bytes: int) -> Any:
        """The request's JSON value; InvalidInput / TooLarge say what is wrong with it."""
        if self.payload is not _NO_PAYLOAD:
            return self.payload
        if not self.body:
            raise InvalidInput('the request body is empty: send JSON like {"query": "two dogs", "input_type": "text"}')
        if len(self.body) > max_bytes:
            raise TooLarge(f"the request body has {len(self.body):,} bytes, the limit is {max_bytes:,}")
        return parse_json(self.body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes | str) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput("the request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"the request body is not valid JSON ({exc})") from None


def _str_map(value: Any, what: str, lower: bool = False) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(400, "bad_event", f"event {what} must be an object")
    return {(k.lower() if lower else k): v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _body(event: dict) -> bytes | None:
    body = event.get("body")
    if body is None:
        return None
    if not isinstance(body, str):
        raise HttpError(400, "bad_event", "event body must be a string")
    if event.get("isBase64Encoded") is True:
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("the body is marked isBase64Encoded but is not valid base64") from None
    # A JSON string may hold lone surrogates; keep them so the JSON parser refuses them with a 400.
    return body.encode("utf-8", "surrogatepass")


def parse_event(event: Any) -> HttpRequest:
    """Any event into an HttpRequest; malformed proxy events raise HttpError(400)."""
    if isinstance(event, dict) and "httpMethod" in event:
        method = event["httpMethod"]
        if not isinstance(method, str):
            raise HttpError(400, "bad_event", "event httpMethod must be a string")
        path = event.get("path") if isinstance(event.get("path"), str) else "/"
        return HttpRequest("rest", method.upper(), path, _str_map(event.get("headers"), "headers", lower=True),
                           _str_map(event.get("queryStringParameters"), "queryStringParameters"), _body(event))
    if isinstance(event, dict) and event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict):
        http = event["requestContext"].get("http")
        if not isinstance(http, dict) or not isinstance(http.get("method"), str):
            raise HttpError(400, "bad_event", "event requestContext.http.method must be a string")
        path = event.get("rawPath") if isinstance(event.get("rawPath"), str) else "/"
        return HttpRequest("http", http["method"].upper(), path, _str_map(event.get("headers"), "headers", lower=True),
                           _str_map(event.get("queryStringParameters"), "queryStringParameters"), _body(event))
    return HttpRequest("direct", "POST", "/search", payload=event)


def cors_headers(origin: str | None, allowed: tuple[str, ...], *, preflight: bool = False) -> dict[str, str]:
    """CORS headers echoing `origin` when it is allowed; none otherwise (the browser then refuses)."""
    if not origin or origin not in allowed:
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update({
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        })
    return headers


def proxy_response(status: int, body: Any | None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    out_headers = {"Content-Type": "application/json"} if body is not None else {}
    out_headers.update(headers or {})
    return {
        "statusCode": status,
        "headers": out_headers,
        "body": "" if body is None else utf8_json(body),
        "isBase64Encoded": False,
    }


def utf8_json(value: Any) -> str:
    """Compact JSON text that any UTF-8 encoder accepts.

    Non-ASCII characters stay as they are, unless the value holds a lone surrogate (a JSON
    "\\ud800" escape decodes to one): the runtime's UTF-8 encoder would fail on it and the caller
    would get a 502, so that text is written with \\u escapes instead.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)
    return text
