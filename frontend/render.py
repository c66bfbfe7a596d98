"""Text for result cards and status lines: pure functions, so they are tested without Streamlit.

Unsplash's guidelines ask for "Photo by <photographer> on Unsplash", linking the photographer's
profile and the photo's page, each with `utm_source=<app>&utm_medium=referral`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from frontend.client import SearchRequest

UTM = {"utm_source": "clipsearch", "utm_medium": "referral"}
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def md_escape(text: str) -> str:
    """Text shown literally inside Streamlit markdown (names may contain * or [ ])."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def safe_link(url: Any) -> str | None:
    """The URL if it is http(s) (never javascript: or file:), else None."""
    if not isinstance(url, str):
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return url.strip()


def with_utm(url: str) -> str:
    """The link with Unsplash's referral parameters added (kept if already there)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for key, value in UTM.items():
        query.setdefault(key, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _md_link(text: str, url: str) -> str:
    # Parentheses inside a markdown link target would end it early.
    return f"[{md_escape(text)}]({url.replace('(', '%28').replace(')', '%29').replace(' ', '%20')})"


def attribution(result: dict[str, Any]) -> str | None:
    """Markdown crediting the photo: Unsplash's wording, or the local file's name."""
    name = result.get("photographer")
    profile = safe_link(result.get("photographer_url"))
    page = safe_link(result.get("page_url"))
    if name:
        who = _md_link(name, with_utm(profile)) if profile else md_escape(name)
        where = _md_link("Unsplash", with_utm(page)) if page else "Unsplash"
        return f"Photo by {who} on {where}"
    if page:
        return _md_link("View on Unsplash", with_utm(page))
    if result.get("path"):
        return md_escape(os.path.basename(str(result["path"])))
    return None


def score_text(score: Any) -> str:
    try:
        return f"score {float(score):.3f}"
    except (TypeError, ValueError):
        return "score ?"


def timing_line(took_ms: dict[str, Any], cached: bool = False) -> str | None:
    """'encode 12 ms · search 1 ms · total 15 ms' from what the API reported; 'encode cached'
    when the API answered from its text-embedding cache (its encode time is then 0)."""
    parts = []
    for key in ("encode", "search", "total"):
        value = took_ms.get(key)
        if key == "encode" and cached:
            parts.append("encode cached")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{key} {value:.0f} ms" if value >= 10 else f"{key} {value:.1f} ms")
    return " · ".join(parts) or None


def warming_message(attempt: int) -> str:
    return f"The search service is warming up (attempt {attempt})…"


def retried_note(attempts: int, elapsed_s: float) -> str | None:
    if attempts <= 1:
        return None
    return f"The search service was warming up: it answered on attempt {attempts}, after {elapsed_s:.1f} s."


def photo_label(result: dict[str, Any]) -> str:
    """How a heading names a result: 'the photo by Ana Lee', 'beach.jpg', or its id."""
    if result.get("photographer"):
        return f"the photo by {result['photographer']}"
    if result.get("path"):
        return os.path.basename(str(result["path"]))
    return str(result.get("id", "?"))


def describe(request: SearchRequest, label: str | None = None) -> str:
    """What the results are for, as a heading; `label` names the photo of an id query."""
    if request.input_type == "text":
        return f"Photos matching “{md_escape(request.query)}”"
    if request.input_type == "id":
        return f"Photos like {md_escape(label)}" if label else f"Photos like `{request.query.replace('`', '')}`"
    if request.input_type == "url":
        return "Photos like the image at " + md_escape(request.query)
    return "Photos like your upload"


def empty_reason(request: SearchRequest) -> str:
    """Why a search found nothing: filters and thresholds first, else the index is empty."""
    limits = [f"{name} = {value}" for name, value in sorted(request.filters.items())]
    if request.min_score is not None:
        limits.append(f"minimum score {request.min_score:.2f}")
    if limits:
        return ("No photo matched " + " and ".join(limits)
                + ". Loosen the filters or lower the minimum score in the sidebar.")
    return ("No results: the index has no photos. Fill it with `python -m ingest folder PATH` or "
            "`python -m ingest unsplash`, then search again.")


def rows(items: Sequence[Any], per_row: int = 4) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), per_row):
        yield items[start:start + per_row]
