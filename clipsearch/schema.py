"""The metadata every document carries: one list for ingest, the backends, the API and the UI.

Ingest writes these fields (missing ones are left out, never invented); the OpenSearch backend
maps them with these types; the server returns them in each result; the front-end shows them.
Filters may name any field whose type is filterable.
"""

from __future__ import annotations

import re
from typing import Any

# name -> type. "keyword": exact-match string; "integer"/"float"/"boolean": numbers and flags;
# "text": free text, returned but not filterable; "stored": returned, not indexed (URLs, paths).
FIELDS: dict[str, str] = {
    "source": "keyword",                # "unsplash" | "folder"
    "url": "stored",                    # image URL to display (absent for local files)
    "path": "stored",                   # local file path (folder source)
    "page_url": "stored",               # the photo's page (Unsplash requires linking it)
    "photographer": "keyword",          # display name
    "photographer_username": "keyword",
    "photographer_url": "stored",       # profile link
    "description": "text",
    "ai_description": "text",
    "width": "integer",
    "height": "integer",
    "orientation": "keyword",           # "landscape" | "portrait" | "squarish"
    "aspect_ratio": "float",
    "location": "text",                 # "City, Country" as given
    "location_country": "keyword",
    "location_city": "keyword",
    "color": "keyword",                 # average colour, "#RRGGBB"
    "blur_hash": "stored",
    "submitted_at": "keyword",          # ISO date as given by the source
    "featured": "boolean",
    "content_hash": "keyword",          # sha256 of the file bytes
}

FILTERABLE = frozenset(n for n, t in FIELDS.items() if t in ("keyword", "integer", "float", "boolean"))


def orientation(width: int, height: int, tolerance: float = 0.05) -> str:
    """'landscape', 'portrait' or 'squarish' (within 5% of square)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad dimensions {width}x{height}")
    ratio = width / height
    if abs(ratio - 1.0) <= tolerance:
        return "squarish"
    return "landscape" if ratio > 1 else "portrait"


# A str may hold surrogate code points that no UTF-8 can encode: os.fsdecode's escapes for a file
# name that is not UTF-8 (b"caf\xe9.jpg" -> "caf\udce9.jpg"), or a JSON "\ud800" escape. Written
# as they are (json.dumps(ensure_ascii=False)), they make the output unencodable, and whatever
# sends it on fails.
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def json_safe(value: Any) -> Any:
    """`value` (metadata: dicts, lists, strings, numbers) with every string, keys included, made
    encodable as UTF-8: a surrogate pair becomes its character, a lone surrogate U+FFFD."""
    if isinstance(value, str):
        if not has_surrogates(value):
            return value
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def display_text(text: str) -> str:
    """`text` made printable and JSON-safe for reports and metadata, keeping what a file name's
    undecodable bytes were: os.fsdecode's escapes (U+DC80-U+DCFF) become `\\xNN`, any other
    lone surrogate U+FFFD."""
    if not has_surrogates(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return json_safe(text)
