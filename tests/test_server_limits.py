"""Size limits as the real path has them: API Gateway takes bodies up to 10 MB, but the Lambda
invocation it makes carries at most 6 MB (6,291,456 bytes), and an image travels base64-encoded
inside a JSON event whichever way it is sent. The default MAX_IMAGE_BYTES is what fits; the local
gateway answers an event over Lambda's limit as API Gateway does (413), never 502.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from clipsearch.config import DEFAULT_MAX_IMAGE_BYTES, EVENT_ENVELOPE_BYTES, LAMBDA_PAYLOAD_BYTES, LimitSettings, Settings
from server.local.gateway import Gateway, rest_event
from server.local.invoker import Invoker

# API Gateway caps the header values of a REST API request at 10,240 bytes in all ("Total
# combined size of all header values", API Gateway quotas); the event carries them twice.
BIG_HEADERS = {"Content-Type": "application/json", "User-Agent": "u" * 4000, "X-Forwarded-For": "x" * 3000,
               "Via": "v" * 3000}


def event_bytes(body: bytes, headers: dict[str, str]) -> int:
    return len(json.dumps(rest_event("POST", "/search?k=100&min_score=-0.25", headers, body, "203.0.113.7")).encode())


def test_the_default_image_limit_is_what_fits_a_lambda_invocation():
    assert LimitSettings().max_image_bytes == Settings.from_env({}).limits.max_image_bytes == DEFAULT_MAX_IMAGE_BYTES
    image = b"\xff" * DEFAULT_MAX_IMAGE_BYTES
    as_json = json.dumps({"query": base64.b64encode(image).decode(), "input_type": "image", "k": 100,
                          "min_score": -0.25, "filters": {"orientation": "landscape"}}).encode()
    # A direct invocation, a JSON POST and a raw POST through API Gateway, with the largest headers it passes on.
    assert len(as_json) <= LAMBDA_PAYLOAD_BYTES
    assert event_bytes(as_json, BIG_HEADERS) <= LAMBDA_PAYLOAD_BYTES
    assert event_bytes(image, {**BIG_HEADERS, "Content-Type": "image/jpeg"}) <= LAMBDA_PAYLOAD_BYTES
    # ...and not far below it: a few kilobytes more would not fit the same event.
    bigger = b"\xff" * (DEFAULT_MAX_IMAGE_BYTES + EVENT_ENVELOPE_BYTES)
    assert event_bytes(bigger, {**BIG_HEADERS, "Content-Type": "image/jpeg"}) > LAMBDA_PAYLOAD_BYTES


class RecordingEmulator:
    """A stand-in for the emulator's invocation URL that records payload sizes and answers 200."""

    def __init__(self):
        self.sizes: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                outer.sizes.append(len(self.rfile.read(int(self.headers["Content-Length"]))))
                data = json.dumps({"statusCode": 200, "headers": {"Content-Type": "application/json"},
                                   "body": '{"results": []}'}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/2015-03-31/functions/function/invocations"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_the_gateway_answers_413_for_an_event_over_lambdas_limit_and_never_invokes():
    emulator = RecordingEmulator()
    invoker = Invoker(emulator.url, call_timeout_s=30)
    gw = Gateway(("127.0.0.1", 0), invoker, timeout_s=20)
    threading.Thread(target=gw.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{gw.server_address[1]}/search"
    try:
        fits = json.dumps({"query": "A" * (LAMBDA_PAYLOAD_BYTES - EVENT_ENVELOPE_BYTES), "input_type": "image"})
        assert post(url, fits.encode())[0] == 200 and len(emulator.sizes) == 1
        for size in (LAMBDA_PAYLOAD_BYTES, 5_000_000 * 4 // 3, 9_000_000):  # under API Gateway's 10 MB, over Lambda's 6
            body = json.dumps({"query": "A" * size, "input_type": "image"}).encode()
            t0 = time.monotonic()
            status, headers, raw = post(url, body)
            assert status == 413 and json.loads(raw) == {"message": "Request Too Long"}, (size, status, raw[:200])
            assert headers["Content-Type"] == "application/json" and time.monotonic() - t0 < 10
        raw_image = b"\xff\xd8\xff" + b"\0" * 4_800_000  # 6.4 MB once base64-encoded into the event
        assert post(url, raw_image, "image/jpeg")[0] == 413
        assert len(emulator.sizes) == 1, "an event over the limit must never reach the function"
        assert max(emulator.sizes) <= LAMBDA_PAYLOAD_BYTES
    finally:
        gw.shutdown(), gw.server_close(), invoker.close(), emulator.close()


def test_the_page_never_sends_an_upload_the_function_cannot_take():
    from frontend.query import MAX_SEND_BYTES

    assert MAX_SEND_BYTES <= DEFAULT_MAX_IMAGE_BYTES  # larger uploads are re-encoded below it
