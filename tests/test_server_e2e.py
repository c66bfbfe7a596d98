"""End to end over HTTP: the real Lambda emulator running awslambdaric + the handler, and the gateway.

One stack per module (starting one costs a few seconds); the tiny random CLIP and a real index.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import make_image
from server_support import build_index

from server.local import LocalStack

pytestmark = pytest.mark.e2e
ORIGIN = "http://localhost:8501"


def http(url: str, body: bytes | dict | None = None, *, method: str | None = None, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_encoder, tiny_model_dir):
    root = tmp_path_factory.mktemp("e2e")
    build_index(root / "index", tiny_encoder)
    env = {"MODEL_PATH": str(tiny_model_dir), "INDEX_PATH": str(root / "index"), "TORCH_THREADS": "1",
           "CORS_ALLOW_ORIGINS": ORIGIN}
    with LocalStack(env=env, log=root / "stack.log") as s:
        assert s.ready_status == 200, (root / "stack.log").read_text()[-3000:]
        yield s


def test_gateway_search_returns_ranked_results(stack):
    status, headers, raw = http(stack.search_url, {"query": "two dogs", "input_type": "text", "k": 3},
                                headers={"Origin": ORIGIN})
    body = json.loads(raw)
    assert status == 200 and body["count"] == 3 and body["model"] == "clipsearch/tiny-test"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert set(body["took_ms"]) == {"encode", "search", "total"}


def test_emulator_direct_invocation_returns_the_proxy_shape(stack):
    """What the README's curl does: the body straight to the emulator's invocation URL."""
    status, _, raw = http(stack.invoke_url, b'{"query": "two dogs", "input_type": "text"}')
    out = json.loads(raw)
    assert status == 200 and out["statusCode"] == 200
    assert json.loads(out["body"])["count"] == 10


def test_health_and_preflight_through_the_gateway(stack):
    status, _, raw = http(stack.health_url)
    assert status == 200 and json.loads(raw)["status"] == "ok"
    status, headers, raw = http(stack.search_url, method="OPTIONS",
                                headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert status == 204 and raw == b"" and headers["Access-Control-Allow-Origin"] == ORIGIN


def test_image_query_over_http(stack):
    b64 = base64.b64encode(make_image(4, size=(48, 64))).decode()
    status, _, raw = http(stack.search_url, {"query": b64, "input_type": "image", "k": 1})
    assert status == 200 and json.loads(raw)["results"][0]["id"] == "doc04"
    status, _, raw = http(stack.search_url, make_image(6, size=(48, 64), fmt="PNG"), headers={"Content-Type": "image/png"})
    assert status == 200 and json.loads(raw)["results"][0]["id"] == "doc06"
