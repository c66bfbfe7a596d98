"""Turn what the user entered into a SearchRequest, or a message saying what to fix."""

from __future__ import annotations

import base64
import io
from urllib.parse import urlsplit

from clipsearch.errors import ClipsearchError
from clipsearch.images import decode_image
from frontend.client import SearchRequest

ORIENTATIONS = ("landscape", "portrait", "squarish")
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp")
# A synchronous Lambda invocation carries at most 6 MB, and base64 adds a third: uploads above
# this are re-encoded smaller (CLIP sees 224 px anyway), so a phone photo still searches.
MAX_SEND_BYTES = 4_000_000
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
SEND_MAX_SIDE = 1024


class BadQuery(ClipsearchError):
    """What the user entered cannot be searched; str() says what to fix."""

    code = "bad_query"


def filters_for(orientation: str | None) -> dict[str, str]:
    if not orientation:
        return {}
    if orientation not in ORIENTATIONS:
        raise BadQuery(f"orientation must be one of {', '.join(ORIENTATIONS)}")
    return {"orientation": orientation}


def text_request(text: str, **opts) -> SearchRequest:
    text = (text or "").strip()
    if not text:
        raise BadQuery("Type what you are looking for, e.g. “two dogs on a beach”.")
    return SearchRequest(text, "text", **opts)


def url_request(url: str, **opts) -> SearchRequest:
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadQuery("Give the image's full http(s) address, e.g. https://example.com/photo.jpg.")
    return SearchRequest(url, "url", **opts)


def image_request(data: bytes | None, **opts) -> SearchRequest:
    if not data:
        raise BadQuery("Choose a JPEG, PNG or WebP photo to search with.")
    return SearchRequest(encode_upload(data), "image", **opts)


def encode_upload(data: bytes) -> str:
    """Base64 of the upload, re-encoded as a smaller JPEG when it would not fit a Lambda request."""
    if len(data) <= MAX_SEND_BYTES:
        return base64.b64encode(data).decode("ascii")
    try:
        img = decode_image(data, max_bytes=MAX_UPLOAD_BYTES)
    except ClipsearchError as exc:
        raise BadQuery(f"That file cannot be used: {exc}") from None
    img.thumbnail((SEND_MAX_SIDE, SEND_MAX_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")
