"""The search request, validated at the edge into typed models (pydantic v2).

A discriminated union on `input_type` picks the query model; the core never sees raw dicts.
Every refusal becomes InvalidInput with a message naming the field and what to send instead.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from clipsearch.errors import InvalidInput
from clipsearch.index.filters import Filters, parse_filters, show
from clipsearch.schema import FILTERABLE

MAX_K = 100
DEFAULT_K = 10
MAX_TEXT_CHARS = 1000  # CLIP reads 77 tokens; this only bounds the tokenizer's work
MAX_URL_CHARS = 2048
MAX_ID_CHARS = 512
INPUT_TYPES = ("text", "image", "url", "id")


def _parsed_filters(value: Any) -> Filters | None:
    """A request's `filters` object, parsed once into the conditions every backend takes as they are."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("Input should be a valid dictionary")
    if not value:
        return None
    # repr, not str: a key may hold a lone surrogate, which pydantic cannot put in a message.
    unknown = sorted(show(name, 40) for name in value if name not in FILTERABLE)
    if unknown:
        named = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"cannot filter on {named}: filterable fields are {', '.join(sorted(FILTERABLE))}")
    try:
        return parse_filters(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


class _Query(BaseModel):
    # strict: "10" is not a k, 1 is not a boolean; extra fields are refused, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)

    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)
    filters: Annotated[Filters | None, BeforeValidator(_parsed_filters)] = None
    min_score: float | None = Field(None, ge=-1.0, le=1.0, allow_inf_nan=False)


class TextQuery(_Query):
    input_type: Literal["text"]
    query: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is blank: send some words to search for")
        return value


class ImageQuery(_Query):
    input_type: Literal["image"]
    # base64 (or a data: URL), the byte cap checked on decode; or an http(s) URL of the image,
    # fetched as a `url` query is (the original client sent image URLs this way). The two cannot
    # be confused: ":" is not a base64 character.
    query: str = Field(min_length=1)

    @field_validator("query")
    @classmethod
    def _url_length(cls, value: str) -> str:
        if is_http_url(value) and len(value) > MAX_URL_CHARS:
            raise ValueError(f"an image URL is limited to {MAX_URL_CHARS} characters")
        return value

    @property
    def is_url(self) -> bool:
        return is_http_url(self.query)


class UrlQuery(_Query):
    input_type: Literal["url"]
    query: str = Field(min_length=1, max_length=MAX_URL_CHARS)

    @field_validator("query")
    @classmethod
    def _http(cls, value: str) -> str:
        if not is_http_url(value):
            raise ValueError("only http:// and https:// image URLs are accepted")
        return value


class IdQuery(_Query):
    input_type: Literal["id"]
    query: str = Field(min_length=1, max_length=MAX_ID_CHARS)


Query = Union[TextQuery, ImageQuery, UrlQuery, IdQuery]
_ADAPTER: TypeAdapter = TypeAdapter(Annotated[Query, Field(discriminator="input_type")])
FIELDS = ("query", "input_type", "k", "filters", "min_score")


def parse_query(data: Any) -> Query:
    """Validate a JSON value into a query model, or raise InvalidInput saying what to fix."""
    if not isinstance(data, dict):
        raise InvalidInput(
            f'the body must be a JSON object like {{"query": "two dogs", "input_type": "text"}}, got {_kind(data)}'
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        message = describe(exc)
        if any(err["loc"][-1:] == ("query",) or err["type"].startswith("union_tag") for err in exc.errors()):
            message += suggestion(data.get("query"), data.get("input_type"))
        raise InvalidInput(message) from None


def is_http_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


_BASE64 = re.compile(r"[A-Za-z0-9+/_=\-\r\n]+")
_LOOKS_LIKE = {"url": "an http(s) image URL", "image": "base64 image data", "text": "words"}


def guess_input_type(query: str) -> str | None:
    """The input_type the query's shape suggests, or None when it could be anything (an id).

    Only ever used to suggest, never to reinterpret: a text query may hold a URL. Reads the
    first 4 KB only: an error message must not cost a scan of a 6 MB body."""
    q = query[:4096].strip()
    if is_http_url(q) and not any(c.isspace() for c in q):
        return "url"
    if q.startswith("data:image/") or (len(q) >= 200 and _BASE64.fullmatch(q)):
        return "image"
    if any(c.isspace() for c in q) and any(c.isalpha() for c in q):
        return "text"
    return None


def suggestion(query: Any, input_type: Any) -> str:
    """'; the query looks like ...: send it with input_type "x"', or '' when nothing better fits."""
    if not isinstance(query, str):
        return ""
    guess = guess_input_type(query)
    if guess is None or guess == input_type or (guess == "url" and input_type == "image"):
        return ""
    return f'; the query looks like {_LOOKS_LIKE[guess]}: send it with input_type "{guess}"'


def describe(exc: ValidationError, limit: int = 3) -> str:
    """One readable sentence per problem (at most `limit`), naming the field."""
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = [str(p) for p in err["loc"] if p not in INPUT_TYPES]  # drop the union member's tag
        field_name = ".".join(loc) or "body"
        if not _is_text(field_name):
            field_name = show(field_name, 40)
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {field_name!r}: allowed fields are {', '.join(FIELDS)}")
        elif err["type"] == "union_tag_not_found":
            parts.append(f"input_type is missing: set it to one of {', '.join(INPUT_TYPES)}")
        elif err["type"] == "union_tag_invalid":
            parts.append(f"input_type {_short(err['input'].get('input_type') if isinstance(err['input'], dict) else None)}"
                         f" is not one of {', '.join(INPUT_TYPES)}")
        elif err["type"] == "missing":
            parts.append(f"{field_name} is required")
        elif err["type"] == "string_unicode":
            what = "a field name" if field_name == "body" else field_name
            parts.append(f"{what} is not valid Unicode text (it holds a lone surrogate, {_short(err.get('input'))}): "
                         "send UTF-8 text")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{field_name}: {msg} (got {_short(err.get('input'))})")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return show(value, limit)


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
