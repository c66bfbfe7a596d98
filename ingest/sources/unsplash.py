"""The Unsplash Lite dataset: archive, photos.tsv000 -> metadata, images downloaded in threads.

    <data-dir>/unsplash-lite.zip      the dataset archive (downloaded once)
    <data-dir>/images/<photo_id>.jpg  each photo at the chosen width

A re-run skips the archive and every image already on disk, and every photo already in the
index. Photos whose image cannot be had (404, not an image, still failing after the retries)
are reported and skipped; the rest of the run goes on.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from clipsearch.errors import ClipsearchError, IngestError
from clipsearch.images import decode_image
from clipsearch.schema import orientation
from ingest.download import Downloader, DownloadFailed, DownloadRetries
from ingest.sources.base import Item, SourceContext

DEFAULT_URL = "https://unsplash.com/data/lite/latest"
ARCHIVE = "unsplash-lite.zip"
PHOTOS_TSV = "photos.tsv000"
ARCHIVE_MAX_BYTES = 20 * 1024**3
# Unsplash ids are short URL-safe tokens; anything else would be unsafe as a file name.
PHOTO_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class UnsplashOptions:
    dataset_url: str = DEFAULT_URL
    data_dir: Path = Path("data/unsplash")
    width: int = 480
    workers: int = 32
    limit: int | None = None
    policy: DownloadRetries = field(default_factory=DownloadRetries)
    max_image_bytes: int = 50 * 1024 * 1024


@dataclass(frozen=True)
class Photo:
    id: str
    image_url: str  # at the chosen width
    metadata: dict[str, Any]


# -- metadata ---------------------------------------------------------------------------------
def sized_url(image_url: str, width: int) -> str:
    """`image_url` asking for `width` px (`w=`), keeping the other query parameters; 0 = as is."""
    if not width:
        return image_url
    parts = urlsplit(image_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "w"]
    query.append(("w", str(width)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _int(raw: str | None) -> int | None:
    try:
        value = int(float(raw)) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw not in (None, "") else None
    except ValueError:
        return None


def _bool(raw: str | None) -> bool | None:
    value = (raw or "").strip().lower()
    return {"t": True, "true": True, "1": True, "f": False, "false": False, "0": False}.get(value)


def photo_metadata(row: dict[str, str | None], width: int) -> dict[str, Any]:
    """One photos.tsv000 row to document metadata (clipsearch.schema). Missing fields are left
    out, never invented."""
    text = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
    meta: dict[str, Any] = {"source": "unsplash"}
    if text.get("photo_image_url"):
        meta["url"] = sized_url(text["photo_image_url"], width)
    names = [text.get("photographer_first_name"), text.get("photographer_last_name")]
    for key, value in (
        ("page_url", text.get("photo_url")),
        ("photographer", " ".join(n for n in names if n)),
        ("photographer_username", text.get("photographer_username")),
        ("description", text.get("photo_description")),
        ("ai_description", text.get("ai_description")),
        ("location", text.get("photo_location_name")),
        ("location_country", text.get("photo_location_country")),
        ("location_city", text.get("photo_location_city")),
        ("blur_hash", text.get("blur_hash")),
        ("submitted_at", text.get("photo_submitted_at")),
    ):
        if value:
            meta[key] = value
    if meta.get("photographer_username"):
        meta["photographer_url"] = f"https://unsplash.com/@{meta['photographer_username']}"
    w, h = _int(text.get("photo_width")), _int(text.get("photo_height"))
    if w and h:
        meta.update(width=w, height=h, orientation=orientation(w, h))
    ratio = _float(text.get("photo_aspect_ratio"))
    if ratio is not None and ratio > 0:
        meta["aspect_ratio"] = ratio
    featured = _bool(text.get("photo_featured"))
    if featured is not None:
        meta["featured"] = featured
    return meta


def read_photos(archive: Path, width: int, limit: int | None, failures: list[tuple[str, str]]) -> list[Photo]:
    """The archive's photos.tsv000 rows as Photos, in file order; bad rows go to `failures`."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(f"{archive} is not a readable zip archive ({exc}): delete it to download it again") from None
    with zf:
        # Lite has one photos.tsv000; the Full dataset splits it (photos.tsv000, 001, ...), each
        # with its header row.
        names = sorted(n for n in zf.namelist() if re.fullmatch(r"photos\.tsv\d{3}", n.rsplit("/", 1)[-1]))
        if not names:
            raise IngestError(f"{archive} has no {PHOTOS_TSV}: is --dataset-url an Unsplash dataset archive?")
        photos: list[Photo] = []
        seen: set[str] = set()
        for name in names:
            remaining = None if limit is None else limit - len(photos)
            if remaining == 0:
                break
            with zf.open(name) as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
                photos.extend(_parse_rows(text, width, remaining, failures, seen))
        return photos


def _parse_rows(text, width: int, limit: int | None, failures: list[tuple[str, str]], seen: set[str]) -> Iterator[Photo]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # The dataset is plain TSV without quoting: a description starting with '"' is text.
    reader = csv.DictReader(text, delimiter="\t", quoting=csv.QUOTE_NONE)
    if not reader.fieldnames or "photo_id" not in reader.fieldnames or "photo_image_url" not in reader.fieldnames:
        raise IngestError(f"{PHOTOS_TSV} has no photo_id/photo_image_url header: got {reader.fieldnames!r}")
    count = 0
    for line_no, row in enumerate(reader, start=2):
        if limit is not None and count >= limit:
            return
        photo_id = (row.get("photo_id") or "").strip()
        image_url = (row.get("photo_image_url") or "").strip()
        if None in row:  # more columns than the header: a stray tab shifted every field after it
            failures.append((photo_id or f"line {line_no}", f"malformed_row: line {line_no} has too many columns"))
            continue
        if not PHOTO_ID.match(photo_id):
            failures.append((f"line {line_no}", f"malformed_row: bad photo_id {photo_id[:80]!r}"))
            continue
        if not image_url.startswith(("http://", "https://")):
            failures.append((photo_id, f"malformed_row: photo_image_url {image_url[:80]!r} is not an http(s) URL"))
            continue
        if photo_id in seen:
            continue
        seen.add(photo_id)
        count += 1
        yield Photo(photo_id, sized_url(image_url, width), photo_metadata(row, width))


# -- downloads --------------------------------------------------------------------------------
def check_image(path: Path, content_type: str) -> None:
    """A complete body that is not a decodable image (an HTML error page, a corrupt file) fails."""
    if content_type and not content_type.lower().startswith(("image/", "application/octet-stream")):
        raise DownloadFailed(str(path), "not_an_image", f"Content-Type {content_type.split(';')[0]}")
    try:
        decode_image(path.read_bytes(), max_bytes=path.stat().st_size + 1)
    except ClipsearchError as exc:
        raise DownloadFailed(str(path), "not_an_image", str(exc)) from None


def fetch_archive(opts: UnsplashOptions, downloader: Downloader, progress) -> Path:
    archive = opts.data_dir / ARCHIVE
    if archive.is_file() and zipfile.is_zipfile(archive):
        return archive

    def check(path: Path, content_type: str) -> None:
        if not zipfile.is_zipfile(path):
            raise DownloadFailed(opts.dataset_url, "not_a_zip", f"Content-Type {content_type or 'unknown'}")

    bar = progress.bar("archive")
    bar.unit, bar.unit_scale = "B", True
    try:
        downloader.download(opts.dataset_url, archive, max_bytes=ARCHIVE_MAX_BYTES, check=check, on_bytes=bar.update)
    except DownloadFailed as exc:
        raise IngestError(f"cannot download the Unsplash dataset: {exc}") from None
    return archive


def sweep_temp_files(directory: Path) -> None:
    """Temp files left by a killed run (the rename never happened): never valid, remove them."""
    if directory.is_dir():
        for tmp in directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def download_images(photos: list[Photo], opts: UnsplashOptions, downloader: Downloader, summary, progress) -> list[Item]:
    """Items for the photos whose image is on disk (already, or downloaded now), in input order."""
    images = opts.data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    sweep_temp_files(images)
    on_disk: dict[str, Path] = {}
    todo: list[Photo] = []
    for photo in photos:
        path = images / f"{photo.id}.jpg"
        if path.is_file():
            on_disk[photo.id] = path
            summary.skipped["on disk"] += 1
        else:
            todo.append(photo)
    bar = progress.bar("download", total=len(todo))
    if todo:
        with ThreadPoolExecutor(max(1, opts.workers), thread_name_prefix="download") as pool:
            futures = {
                pool.submit(downloader.download, p.image_url, images / f"{p.id}.jpg",
                            max_bytes=opts.max_image_bytes, check=check_image): p
                for p in todo
            }
            for future in as_completed(futures):
                photo = futures[future]
                try:
                    future.result()
                    on_disk[photo.id] = images / f"{photo.id}.jpg"
                    summary.downloaded += 1
                except DownloadFailed as exc:
                    summary.fail(photo.id, f"{exc.reason}: {exc.detail} ({photo.image_url}, {exc.attempts} attempts)")
                except OSError as exc:  # disk full, permissions: this photo fails, the run goes on
                    summary.fail(photo.id, f"write_failed: {exc}")
                bar.update(1)
    return [Item(p.id, on_disk[p.id], p.id, p.metadata) for p in photos if p.id in on_disk]


def collect(opts: UnsplashOptions, indexed_ids: set[str], summary, progress) -> list[Item]:
    """Archive -> rows -> images on disk; returns the items the pipeline still has to ingest."""
    downloader = Downloader(opts.policy)
    archive = fetch_archive(opts, downloader, progress)
    photos = read_photos(archive, opts.width, opts.limit, summary.failed)
    summary.found = len(photos)
    todo = [p for p in photos if p.id not in indexed_ids]
    if len(todo) < len(photos):
        summary.skipped["already indexed"] += len(photos) - len(todo)
    return download_images(todo, opts, downloader, summary, progress)


class UnsplashSource:
    """`python -m ingest unsplash` as a `Source`: downloads, then hands over the photos on disk.
    Its state is the index itself (a photo there is skipped next time) and the images on disk;
    a photo is never removed."""

    name = "unsplash"
    stage = "download"

    def __init__(self, options: UnsplashOptions):
        self.options = options

    def items(self, ctx: SourceContext) -> list[Item]:
        return collect(self.options, ctx.indexed_ids, ctx.summary, ctx.progress)

    def checkpoint(self, done: Mapping[str, str]) -> None:
        pass

    def removed(self, done: Mapping[str, str]) -> set[str]:
        return set()
