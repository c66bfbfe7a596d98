"""Helpers for the query-service tests: a small real FAISS index of generated images, a local image server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from conftest import make_image

from clipsearch.images import decode_image
from clipsearch.index.base import Document
from clipsearch.index.faiss_index import FaissIndex

N_DOCS = 24


def doc_metadata(i: int) -> dict[str, Any]:
    w, h = (64, 48) if i % 2 else (48, 64)
    return {"source": "folder", "path": f"/photos/p{i:02d}.jpg", "width": w, "height": h,
            "orientation": "landscape" if w > h else "portrait", "photographer": f"ph{i % 3}",
            "description": f"generated photo {i}"}


def build_index(path: Path, encoder, n: int = N_DOCS) -> list[str]:
    """A saved embedded index of `n` generated images, encoded by `encoder`; returns the ids."""
    index = FaissIndex(path, model_id=encoder.model_id, dim=encoder.dim)
    docs = []
    for i in range(n):
        meta = doc_metadata(i)
        img = decode_image(make_image(i, size=(meta["width"], meta["height"])))
        docs.append(Document(f"doc{i:02d}", encoder.encode_images([img])[0], meta))
    index.upsert(docs)
    index.save()
    return [d.id for d in docs]


def reply(response: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """(status, headers, decoded JSON body or None) of a proxy response, checking its shape."""
    assert set(response) >= {"statusCode", "headers", "body"}, response
    assert isinstance(response["statusCode"], int) and isinstance(response["body"], str)
    body = json.loads(response["body"]) if response["body"] else None
    return response["statusCode"], response["headers"], body


def proxy_event(body: str | None, *, method: str = "POST", path: str = "/search", headers: dict | None = None,
                base64: bool = False, query: dict | None = None) -> dict[str, Any]:
    return {"resource": path, "path": path, "httpMethod": method, "headers": headers or {"Content-Type": "application/json"},
            "queryStringParameters": query, "requestContext": {"requestId": "t", "stage": "test"},
            "body": body, "isBase64Encoded": base64}


class FileServer:
    """A real HTTP server on 127.0.0.1 whose routes are small callables: path -> (status, headers, body)."""

    def __init__(self, routes: dict[str, Callable[[], tuple[int, dict[str, str], bytes]]]):
        self.routes, self.hits = routes, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                route = outer.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                route(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def send(status: int, headers: dict[str, str], body: bytes) -> Callable:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return route
