"""A real HTTP server on 127.0.0.1 that plays Unsplash for ingest tests.

It serves a generated Lite archive (`/lite.zip`, a zip with photos.tsv000 in the real column
layout) and generated JPEGs (`/photos/<id>`), with scripted faults per photo: each photo has a
list of behaviours consumed one request at a time, the last one repeating:

    "ok"         the JPEG                 "404"  Not Found
    "500"        Internal Server Error    "html" an HTML page with status 200, text/html
    "slow"       sleep `slow_seconds`, then the JPEG (the client should time out and retry)
    "429"        Too Many Requests with Retry-After: 0
    "truncated"  Content-Length of the whole JPEG, half of it sent, connection closed
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from conftest import make_image

COLUMNS = [
    "photo_id", "photo_url", "photo_image_url", "photo_submitted_at", "photo_featured", "photo_width",
    "photo_height", "photo_aspect_ratio", "photo_description", "photographer_username",
    "photographer_first_name", "photographer_last_name", "exif_camera_make", "exif_camera_model", "exif_iso",
    "exif_aperture_value", "exif_focal_length", "exif_exposure_time", "photo_location_name",
    "photo_location_latitude", "photo_location_longitude", "photo_location_country", "photo_location_city",
    "stats_views", "stats_downloads", "ai_description", "ai_primary_landscape", "blur_hash",
]


def photo_row(photo_id: str, base_url: str, i: int, **overrides) -> dict[str, str]:
    row = {c: "" for c in COLUMNS}
    row.update(
        photo_id=photo_id, photo_url=f"https://unsplash.com/photos/{photo_id}",
        photo_image_url=f"{base_url}/photos/{photo_id}?ixid=abc{i}&ixlib=rb-4.0.3",
        photo_submitted_at="2020-05-17 10:01:02.123", photo_featured="t" if i % 2 == 0 else "f",
        photo_width=str(4000 + i), photo_height="3000", photo_aspect_ratio=f"{(4000 + i) / 3000:.2f}",
        photo_description=f"photo number {i}" if i % 3 else "", photographer_username=f"user{i}",
        photographer_first_name=f"First{i}", photographer_last_name="Last" if i % 4 else "",
        exif_camera_make="Canon", photo_location_name=f"Town {i}, Country" if i % 2 else "",
        photo_location_country="Country" if i % 2 else "", photo_location_city=f"Town {i}" if i % 2 else "",
        stats_views="100", ai_description=f"a generated picture {i}", blur_hash="LEHV6nWB2yk8pyo0adR*.7kCMdnj",
    )
    row.update(overrides)
    return row


def build_archive(rows: list[dict[str, str]], extra_lines: list[str] = ()) -> bytes:
    lines = ["\t".join(COLUMNS)] + ["\t".join(r[c] for c in COLUMNS) for r in rows] + list(extra_lines)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("photos.tsv000", "\n".join(lines) + "\n")
        zf.writestr("collections.tsv000", "photo_id\tcollection_id\n")
    return buf.getvalue()


class FakeUnsplash:
    def __init__(self, slow_seconds: float = 1.5):
        self.archive = b""
        self.images: dict[str, bytes] = {}
        self.behaviour: dict[str, list[str]] = {}
        self.requests: Counter = Counter()
        self.widths: dict[str, str] = {}
        self.slow_seconds = slow_seconds
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add_photos(self, n: int, behaviours: dict[int, list[str]] | None = None, size=(64, 48)) -> list[str]:
        ids = []
        for i in range(n):
            photo_id = f"ph{i:03d}-X_{i}"
            self.images[photo_id] = make_image(1000 + i, size=size)
            self.behaviour[photo_id] = list((behaviours or {}).get(i, ["ok"]))
            ids.append(photo_id)
        return ids

    def set_archive(self, ids: list[str], extra_lines: list[str] = (), **overrides) -> None:
        self.archive = build_archive([photo_row(p, self.url, i, **overrides) for i, p in enumerate(ids)], extra_lines)

    def _next(self, photo_id: str) -> str:
        with self._lock:
            steps = self.behaviour.get(photo_id)
            if not steps:
                return "404"
            return steps.pop(0) if len(steps) > 1 else steps[0]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str, length: int | None = None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                parts = urlsplit(self.path)
                with fake._lock:
                    fake.requests[parts.path] += 1
                if parts.path == "/lite.zip":
                    return self._send(200, fake.archive, "application/zip")
                if not parts.path.startswith("/photos/"):
                    return self._send(404, b"no such path", "text/plain")
                photo_id = parts.path.rsplit("/", 1)[1]
                fake.widths[photo_id] = parse_qs(parts.query).get("w", [""])[0]
                action = fake._next(photo_id)
                body = fake.images.get(photo_id, b"")
                try:
                    if action == "ok":
                        self._send(200, body, "image/jpeg")
                    elif action == "slow":
                        time.sleep(fake.slow_seconds)
                        self._send(200, body, "image/jpeg")
                    elif action == "truncated":
                        self._send(200, body[: len(body) // 2], "image/jpeg", length=len(body))
                        self.close_connection = True
                    elif action == "429":
                        self.send_response(429)
                        self.send_header("Retry-After", "0")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif action == "html":
                        self._send(200, b"<html><body>Rate limit exceeded</body></html>", "text/html; charset=utf-8")
                    else:
                        self._send(int(action), f"status {action}".encode(), "text/plain")
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                    pass

        return Handler

    def __enter__(self) -> "FakeUnsplash":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
