"""What each result card shows: the photo, or a placeholder that says why not.

Remote images (Unsplash) are hotlinked, as Unsplash asks: the browser loads them from their CDN.
Each URL is checked first with a HEAD request, so one that is gone shows a placeholder rather than
a broken image. Local files (folder ingest, `path` and no `url`) exist only on the machine that
ingested them; the demo runs everything on one machine, so they are read and shrunk here (their
paths are relative to the ingested folder: CLIPSEARCH_PHOTO_DIRS says where that is).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from PIL import Image, ImageDraw

from clipsearch.errors import ClipsearchError
from clipsearch.images import read_image_file
from frontend.config import FrontendSettings
from frontend.render import safe_link

THUMB_SIDE = 600
CHECK_TIMEOUT = (3.05, 5.0)
WORKERS = 8


@dataclass(frozen=True)
class Thumb:
    """Exactly one of `url` (hotlinked), `image` (a local file, shrunk) is set, or neither
    with `problem` saying why the placeholder shows."""

    url: str | None = None
    image: Image.Image | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def display_url(url: str) -> str:
    """Unsplash's CDN resizes on request: ask for a card-sized image, not the 5 MB original."""
    parts = urlsplit(url)
    if parts.hostname != "images.unsplash.com":
        return url
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "w" in query or "h" in query:
        return url
    query.update({"w": str(THUMB_SIDE), "q": "80", "auto": "format", "fit": "max"})
    return urlunsplit(parts._replace(query=urlencode(query)))


def check_url(url: str, session: requests.Session) -> Thumb:
    try:
        resp = session.head(url, timeout=CHECK_TIMEOUT, allow_redirects=True)
        if resp.status_code in (403, 405, 501):  # some servers refuse HEAD but serve GET
            resp = session.get(url, timeout=CHECK_TIMEOUT, stream=True)
            resp.close()
    except requests.RequestException as exc:
        return Thumb(problem=f"image did not load ({type(exc).__name__})")
    if resp.status_code >= 400:
        return Thumb(problem=f"image did not load (HTTP {resp.status_code})")
    kind = resp.headers.get("Content-Type", "image/")
    if not kind.startswith("image/"):
        return Thumb(problem=f"the link is not an image ({kind.split(';')[0]})")
    return Thumb(url=url)


def local_file(path: str, photo_dirs: Sequence[str] | None = None) -> str | None:
    """Where a result's `path` is on this machine. Folder ingest stores it relative to the folder
    it read, so it is looked up under CLIPSEARCH_PHOTO_DIRS (folders, separated by ':'), never
    above them; an absolute path (an index written before paths were relative) is taken as is."""
    if os.path.isabs(path):
        return path if os.path.isfile(path) else None
    if photo_dirs is None:
        photo_dirs = FrontendSettings.from_env().photo_dirs
    for folder in photo_dirs:
        root = os.path.realpath(folder)
        candidate = os.path.realpath(os.path.join(root, path))
        if candidate.startswith(root + os.sep) and os.path.isfile(candidate):
            return candidate
    return None


def local_thumb(path: str) -> Thumb:
    found = local_file(path)
    if found is None:
        return Thumb(problem="file not found on this machine")
    path = found
    try:
        img = read_image_file(path)
    except (ClipsearchError, OSError) as exc:
        return Thumb(problem=f"cannot show this file ({exc})")
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return Thumb(image=img)


def thumb_for(result: dict[str, Any], session: requests.Session) -> Thumb:
    url = safe_link(result.get("url"))
    if url:
        return check_url(display_url(url), session)
    if isinstance(result.get("path"), str) and result["path"]:
        return local_thumb(result["path"])
    return Thumb(problem="the result has no image URL or file")


def thumbs_for(results: Sequence[dict[str, Any]], session: requests.Session) -> list[Thumb]:
    """One Thumb per result, in order; the checks run concurrently (k may be 100)."""
    if not results:
        return []
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(results))) as pool:
        return list(pool.map(lambda r: thumb_for(r, session), results))


@functools.lru_cache(maxsize=4)
def placeholder(width: int = 400, height: int = 300) -> Image.Image:
    """A neutral card-sized image with a crossed frame: the grid keeps its shape."""
    img = Image.new("RGB", (width, height), (236, 238, 241))
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 8, width - 9, height - 9), outline=(190, 194, 200), width=2)
    draw.line((8, 8, width - 9, height - 9), fill=(214, 217, 222), width=2)
    draw.line((8, height - 9, width - 9, 8), fill=(214, 217, 222), width=2)
    text = "image unavailable"
    box = draw.textbbox((0, 0), text)
    x, y = (width - (box[2] - box[0])) // 2, (height - (box[3] - box[1])) // 2
    draw.rectangle((x - 8, y - 6, x + box[2] - box[0] + 8, y + box[3] - box[1] + 6), fill=(236, 238, 241))
    draw.text((x, y), text, fill=(110, 116, 125))
    return img
