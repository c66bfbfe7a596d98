"""Lambda events in, proxy responses out.

Served: a direct invocation (the event *is* the JSON body, as the emulator's curl sends it), an
API Gateway REST (v1) proxy event, and payload format 2.0 of an HTTP API or a Lambda function
URL (the same shape, `requestContext.http`). They become one `HttpRequest`; every reply is the
proxy shape (`statusCode`, `headers`, `body`), which API Gateway and function URLs need and a
direct caller reads the same way (DESIGN.md, "The API contract").

Refused by name (400 `bad_event`): events of other AWS callers that a Lambda may be wired to,
so that none is mistaken for another kind or for a search request. An Application Load Balancer
event (`requestContext.elb`) looks like a REST event, but its target group may deliver only
`multiValueHeaders` and then expects them back, leaves query strings URL-encoded and caps bodies
at 1 MB (ELB guide, "Lambda functions as targets"): the template deploys no ALB, so none is
served rather than half served. Shapes from tests/events/README.md's sources.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from clipsearch.errors import InvalidInput
from server.errors import HttpError

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
    payload: Any = None  # direct invocation: the already-parsed event (the search request itself)

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


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


SERVED = ("this function serves API Gateway REST (v1) and HTTP API (v2) proxy events, Lambda function URL "
          "requests and direct invocations whose event is the search request")


def unsupported_kind(event: dict) -> str | None:
    """What kind of event this is when it is one of the AWS events not served, else None."""
    ctx = event.get("requestContext")
    if isinstance(ctx, dict):
        if "elb" in ctx:
            return "an Application Load Balancer request (requestContext.elb)"
        if {"connectionId", "eventType", "messageDirection"} & set(ctx):
            return "an API Gateway WebSocket event (requestContext.connectionId)"
        if {"serviceNetworkArn", "serviceArn", "targetGroupArn"} & set(ctx):
            return "a VPC Lattice request, payload version 2.0 (requestContext.serviceArn)"
        if "httpMethod" not in event and not isinstance(ctx.get("http"), (dict, str)):
            return "an event with a requestContext of no kind this function knows"
    if {"raw_path", "is_base64_encoded", "query_string_parameters"} & set(event):
        return "a VPC Lattice request, payload version 1.0 (raw_path)"
    if isinstance(event.get("Records"), list):
        return "an event source's records (S3, SQS, SNS, Kinesis, DynamoDB streams)"
    if "detail-type" in event:
        return "an EventBridge event (detail-type)"
    return None


def parse_event(event: Any) -> HttpRequest:
    """Any event into an HttpRequest; malformed or unsupported events raise HttpError(400)."""
    kind = unsupported_kind(event) if isinstance(event, dict) else None
    if kind is not None:
        raise HttpError(400, "bad_event", f"unsupported event kind: {kind}; {SERVED}")
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


def utf8_json(value: Any, separators: tuple[str, str] = (",", ":")) -> str:
    """Compact JSON text that any UTF-8 encoder accepts.

    Non-ASCII characters stay as they are, unless the value holds a lone surrogate (a JSON
    "\\ud800" escape decodes to one): the runtime's UTF-8 encoder would fail on it and the caller
    would get a 502, so that text is written with \\u escapes instead.
    """
    text = json.dumps(value, ensure_ascii=False, separators=separators, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, separators=separators, default=str)
    return text
