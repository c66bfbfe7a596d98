"""The search request, validated at the edge into typed models (pydantic v2).

A discriminated union on `input_type` picks the query model; the core never sees raw dicts.
Every refusal becomes InvalidInput with a message naming the field and what to send instead.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from clipsearch.errors import InvalidInput
from clipsearch.index.filters import parse_filters, show
from clipsearch.schema import FILTERABLE

MAX_K = 100
DEFAULT_K = 10
MAX_TEXT_CHARS = 1000  # CLIP reads 77 tokens; this only bounds the tokenizer's work
MAX_URL_CHARS = 2048
MAX_ID_CHARS = 512
INPUT_TYPES = ("text", "image", "url", "id")


class _Query(BaseModel):
    # strict: "10" is not a k, 1 is not a boolean; extra fields are refused, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)
    filters: dict[str, Any] | None = None
    min_score: float | None = Field(None, ge=-1.0, le=1.0, allow_inf_nan=False)

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if not value:
            return None
        # repr, not str: a key may hold a lone surrogate, which pydantic cannot put in a message.
        unknown = sorted(show(name, 40) for name in value if name not in FILTERABLE)
        if unknown:
            named = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise ValueError(f"cannot filter on {named}: filterable fields are {', '.join(sorted(FILTERABLE))}")
        try:
            parse_filters(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return value


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
    query: str = Field(min_length=1)  # base64 (or a data: URL); the byte cap is checked on decode


class UrlQuery(_Query):
    input_type: Literal["url"]
    query: str = Field(min_length=1, max_length=MAX_URL_CHARS)

    @field_validator("query")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("only http:// and https:// image URLs are accepted")
        return value


class IdQuery(_Query):
    input_type: Literal["id"]
    query: str = Field(min_length=1, max_length=MAX_ID_CHARS)


SearchRequest = Annotated[Union[TextQuery, ImageQuery, UrlQuery, IdQuery], Field(discriminator="input_type")]
_ADAPTER: TypeAdapter = TypeAdapter(SearchRequest)
FIELDS = ("query", "input_type", "k", "filters", "min_score")


def parse_request(data: Any) -> TextQuery | ImageQuery | UrlQuery | IdQuery:
    """Validate a JSON value into a query model, or raise InvalidInput saying what to fix."""
    if not isinstance(data, dict):
        raise InvalidInput(
            f'the body must be a JSON object like {{"query": "two dogs", "input_type": "text"}}, got {_kind(data)}'
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidInput(describe(exc)) from None


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
