"""A request into a validated query: the one place a search request's body is read.

    event -> HttpRequest (events.py) -> read_query (here) -> Query (models.py) -> SearchService

Two shapes reach it: a JSON body (a direct invocation's event is already that value), and an
image POSTed as the body itself (API Gateway's binary media types) with its options in the query
string. Both become the same JSON value and go through the same strict models, so a raw image's
`k=1_0` or `k=%2010` is refused as a JSON body's "k": "10" is (Python's int() would take both).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from clipsearch.config import LimitSettings
from clipsearch.errors import ImageTooLarge, InvalidInput, TooLarge
from clipsearch.index.filters import show
from server.events import HttpRequest
from server.models import Query, parse_query

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")
RAW_IMAGE_OPTIONS = ("k", "min_score")
# A JSON body carries an image as base64 (4 bytes per 3) plus the other fields.
JSON_OVERHEAD_BYTES = 64 * 1024
# RFC 8259's number grammar, ASCII digits only (\d would also match other scripts' digits).
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def read_query(request: HttpRequest, limits: LimitSettings) -> Query:
    """The request's validated query, or InvalidInput / TooLarge saying what to fix."""
    if request.source != "direct" and request.content_type in RAW_IMAGE_TYPES:
        return parse_query(raw_image_data(request, limits.max_image_bytes))
    if request.query:
        # Refused rather than ignored, as unknown body fields are: `?k=5` on a JSON search
        # would otherwise silently give the default 10 results.
        raise InvalidInput(f"unknown query-string parameter(s) {_names(request.query)}: a JSON search takes every "
                           "option in its body (k, filters, min_score); only a raw image POST reads k and "
                           "min_score from the query string")
    return parse_query(json_body(request, limits.max_image_bytes * 4 // 3 + JSON_OVERHEAD_BYTES))


def json_body(request: HttpRequest, max_bytes: int) -> Any:
    """The request's JSON value: a direct invocation's event, or a proxy event's body parsed."""
    if request.source == "direct":
        return request.payload
    if not request.body:
        raise InvalidInput('the request body is empty: send JSON like {"query": "two dogs", "input_type": "text"}')
    if len(request.body) > max_bytes:
        raise TooLarge(f"the request body has {len(request.body):,} bytes, the limit is {max_bytes:,}")
    return parse_json(request.body)


def raw_image_data(request: HttpRequest, max_image_bytes: int) -> dict[str, Any]:
    """An image POSTed as the body, options in the query string, as the JSON value a body would carry."""
    if not request.body:
        raise InvalidInput("the image body is empty")
    if len(request.body) > max_image_bytes:
        raise ImageTooLarge("bytes", len(request.body), max_image_bytes)
    unknown = {name: v for name, v in request.query.items() if name not in RAW_IMAGE_OPTIONS}
    if unknown:
        raise InvalidInput(f"unknown query-string parameter(s) {_names(unknown)}: a raw image POST takes only "
                           f"{' and '.join(RAW_IMAGE_OPTIONS)}")
    data: dict[str, Any] = {"query": base64.b64encode(request.body).decode("ascii"), "input_type": "image"}
    for name in RAW_IMAGE_OPTIONS:
        if name in request.query:
            data[name] = json_number(name, request.query[name])
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes | str) -> Any:
    """Strict JSON (no NaN or Infinity); InvalidInput says what is wrong."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput("the request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"the request body is not valid JSON ({exc})") from None


def json_number(name: str, raw: str) -> int | float:
    """A query-string value read as the JSON number it spells, or InvalidInput."""
    if _JSON_NUMBER.fullmatch(raw):
        try:
            return parse_json(raw)
        except InvalidInput:  # an integer of more than 4,300 digits
            pass
    raise InvalidInput(f"query-string parameter {name}={show(raw)} is not a number as JSON writes one "
                       f"(ASCII digits, no spaces, underscores or leading zeros), e.g. {name}=5")


def _names(query: dict[str, str]) -> str:
    return ", ".join(sorted(show(n, 30) for n in query)[:5]) + (f" and {len(query) - 5} more" if len(query) > 5 else "")
