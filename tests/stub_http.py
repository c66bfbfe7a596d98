"""A real HTTP server on 127.0.0.1 that plays a script of answers to POST /search and serves
images, recording every request: the front-end's tests count exactly what the client sent.

    with StubApi([Reply(504, {"message": "Endpoint request timed out"}), Reply(200, ok_body)]) as api:
        ...  # api.search_url, api.image_url("a.png"), api.searches (recorded JSON bodies)

Once the script is spent, further searches go to `respond` if given, else get a 500 saying so
(a test that retries too often fails loudly rather than silently getting the last answer again).
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from PIL import Image

GATEWAY_TIMEOUT = {"message": "Endpoint request timed out"}


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list -> JSON; bytes/str sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def png(color=(40, 120, 200), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def ok_body(results: list[dict[str, Any]], model: str = "clipsearch/tiny-test") -> dict[str, Any]:
    return {"results": results, "model": model, "took_ms": {"encode": 12.3, "search": 0.8, "total": 15.1}}


class StubApi:
    def __init__(self, script: list[Reply] | None = None, images: dict[str, bytes] | None = None,
                 respond: Callable[[Any], Reply] | None = None):
        """`respond`, if given, answers every search once the script is spent."""
        self.script = list(script or [])
        self.respond = respond
        self.images = dict(images or {})
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    try:
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                        pass

            def _record(self, body: Any) -> None:
                with stub._lock:
                    stub.seen.append(Seen(self.command, self.path, dict(self.headers), body))

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw
                self._record(body)
                if self.path != "/search":
                    return self._send(404, b'{"message": "Not Found"}', {"Content-Type": "application/json"})
                with stub._lock:
                    reply = stub.script.pop(0) if stub.script else None
                if reply is None and stub.respond is not None:
                    reply = stub.respond(body)
                if reply is None:
                    reply = Reply(500, {"error": {"code": "stub_exhausted",
                                                  "message": "the stub's script is spent: unexpected request"}})
                time.sleep(reply.delay_s)
                if isinstance(reply.body, (dict, list)):
                    data, kind = json.dumps(reply.body).encode(), "application/json"
                elif isinstance(reply.body, bytes):
                    data, kind = reply.body, "text/plain"
                else:
                    data, kind = (reply.body or "").encode(), "text/plain"
                self._send(reply.status, data, {"Content-Type": kind, **reply.headers})

            def _image(self, head: bool):
                self._record(None)
                name = self.path.rsplit("/", 1)[-1].split("?")[0]
                data = stub.images.get(name) if self.path.startswith("/img/") else None
                if data is None:
                    return self._send(404, b"not found", {"Content-Type": "text/plain"}, head)
                kind = "text/html" if data.startswith(b"<") else "image/png"
                self._send(200, data, {"Content-Type": kind}, head)

            def do_GET(self):
                self._image(head=False)

            def do_HEAD(self):
                self._image(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.search_url = f"{self.url}/search"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def image_url(self, name: str) -> str:
        return f"{self.url}/img/{name}"

    @property
    def searches(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == "POST"]

    def __enter__(self) -> "StubApi":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port nothing listens on (bound, read back, released): connections to it are refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
