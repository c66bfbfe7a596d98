"""End to end over HTTP: the real Lambda emulator running awslambdaric + the handler, and the gateway.

One stack per module (starting one costs a few seconds); the tiny random CLIP and a real index.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import make_image
from server_support import build_index

from server.local import LocalLambda

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
    with LocalLambda(env=env, log=root / "stack.log") as s:
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


def test_each_invocation_logs_one_json_line_with_the_lambda_request_id(stack):
    http(stack.invoke_url, b'{"query": "log me", "input_type": "text"}')
    time.sleep(0.3)
    text = Path(stack.log).read_text()
    ended = set(re.findall(r"END RequestId: ([0-9a-f-]{36})", text))  # the id the function saw
    lines = [json.loads(line) for line in text.splitlines() if line.startswith('{"request_id"')]
    assert lines and all(line["request_id"] in ended for line in lines)
    last = lines[-1]
    assert last["status"] == 200 and last["input_type"] == "text" and set(last["took_ms"]) == {"encode", "search", "total"}
    assert "log me" not in text


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


# ----------------------------------------------------------------------------- bad input over HTTP
HTTP_BAD = [
    (b"", 400), (b"{", 400), (b"null", 400), (b"[]", 400), (b'"two dogs"', 400),
    (b'{"query": "x", "input_type": "text", "min_score": NaN}', 400),
    (b'{"query": "x", "input_type": "text", "k": 1000}', 400),
    (b'{"query": "x", "input_type": "video"}', 400),
    (b'{"query": "x", "input_type": "text", "extra": 1}', 400),
    (b'{"query": "x", "input_type": "text", "filters": [1]}', 400),
    (b'{"query": "!!!", "input_type": "image"}', 400),
    (b'{"query": "http://169.254.169.254/latest/meta-data/", "input_type": "url"}', 400),
    (b'{"query": "http://[::1]:8000/x.jpg", "input_type": "url"}', 400),
    (b'{"query": "http://localhost/x.jpg", "input_type": "url"}', 400),
    (b'{"query": "nope", "input_type": "id"}', 404),
    (b"\xff\xfe\x00garbage", 400),
    # Lone surrogates and numbers beyond a double, as JSON text through the gateway and the runtime.
    (b'{"query": "x", "input_type": "text", "filters": {"\\ud800": "x"}}', 400),
    (b'{"query": "x", "input_type": "text", "filters": {"orientation": "\\udfff"}}', 400),
    (b'{"query": "x", "input_type": "text", "filters": {"width": 1' + b"0" * 400 + b'}}', 400),
    (b'{"query": "x", "input_type": "text", "filters": {"width": {"gte": -1' + b"0" * 400 + b'}}}', 400),
    (b'{"query": "x", "input_type": "text", "k": 1' + b"0" * 400 + b'}', 400),
    (b'{"query": "two \\ud800 dogs", "input_type": "text"}', 400),
]


@pytest.mark.parametrize("raw, status", HTTP_BAD)
def test_bad_requests_over_http_get_clear_errors(stack, raw, status):
    got, _, body = http(stack.search_url, raw)
    assert got == status and json.loads(body)["error"]["message"]


@pytest.mark.parametrize("query, status", [("k=3", 200), ("k=1_0", 400), ("k=%2010", 400), ("k=10.0", 400),
                                           ("min_score=0.5&k=2", 200), ("utm_source=x", 400)])
def test_raw_image_query_strings_over_http(stack, query, status):
    got, _, body = http(f"{stack.search_url}?{query}", make_image(6, size=(48, 64), fmt="PNG"),
                        headers={"Content-Type": "image/png"})
    assert got == status, body


def test_a_10_mb_body_is_refused_413(stack):
    got, _, body = http(stack.search_url, json.dumps({"query": "x" * 10_500_000, "input_type": "text"}).encode())
    assert got == 413


def test_the_largest_image_that_fits_searches_one_byte_more_is_the_functions_413(stack):
    """The default MAX_IMAGE_BYTES fits one Lambda invocation as JSON and as a raw POST; one byte
    over is the function's own 413; an event over Lambda's 6 MB is API Gateway's 413, not a 502."""
    from clipsearch.config import DEFAULT_MAX_IMAGE_BYTES

    jpeg = make_image(4, size=(48, 64))
    largest = jpeg + b"\0" * (DEFAULT_MAX_IMAGE_BYTES - len(jpeg))  # the decoder ignores bytes after the image
    as_json = {"query": base64.b64encode(largest).decode(), "input_type": "image", "k": 1}
    for body, ctype in ((as_json, "application/json"), (largest, "image/jpeg")):
        status, _, raw = http(stack.search_url, body, headers={"Content-Type": ctype})
        assert status == 200 and json.loads(raw)["results"][0]["id"] == "doc04", raw[:300]
    status, _, raw = http(stack.search_url, {**as_json, "query": base64.b64encode(largest + b"\0").decode()})
    assert status == 413 and json.loads(raw)["error"]["code"] == "image_too_large", raw[:300]
    status, _, raw = http(stack.search_url, {**as_json, "query": base64.b64encode(largest * 2).decode()[:7_000_000]})
    assert status == 413 and json.loads(raw) == {"message": "Request Too Long"}, raw[:300]
    assert stack.process.poll() is None


def test_a_decompression_bomb_over_http(stack):
    from test_server_inputs import png_header_bomb

    got, _, body = http(stack.search_url, png_header_bomb(), headers={"Content-Type": "image/png"})
    assert got == 413 and json.loads(body)["error"]["code"] == "image_too_large"


def test_malformed_json_straight_to_the_emulator_does_not_kill_the_function(stack):
    """awslambdaric itself refuses it (Runtime.UnmarshalError) before our handler runs."""
    got, _, raw = http(stack.invoke_url, b'{"query": ')
    assert got == 200 and json.loads(raw)["errorType"] == "Runtime.UnmarshalError"
    got, _, raw = http(stack.invoke_url, b'{"query": "two dogs", "input_type": "text"}')
    assert json.loads(raw)["statusCode"] == 200


def test_parallel_requests_are_serialised_not_crashing_the_emulator(stack):
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        return http(stack.search_url, {"query": f"dog {i}", "input_type": "text", "k": 2})[0]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(24))) == [200] * 24
    assert stack.process.poll() is None


def test_direct_invocations_beside_the_gateway_queue_rather_than_crash_the_emulator(stack):
    """A curl on port 9000 while the front-end searches: the emulator alone panics on the overlap."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        if i % 2:
            status, _, raw = http(stack.invoke_url, {"query": f"dog {i}", "input_type": "text", "k": 2})
            return status, json.loads(raw)["statusCode"]
        return http(stack.search_url, {"query": f"cat {i}", "input_type": "text", "k": 2})[0], 200

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(24))) == [(200, 200)] * 24
    assert stack.process.poll() is None


def test_the_invocation_port_refuses_other_paths_and_oversized_payloads(stack):
    assert http(stack.invoke_url.replace("invocations", "nope"), b"{}")[0] == 404
    got, _, raw = http(stack.invoke_url, b'"' + b"x" * (6 * 1024 * 1024) + b'"')
    assert got == 413 and b"smaller than" in raw
    assert json.loads(http(stack.invoke_url, {"query": "dog", "input_type": "text"})[2])["statusCode"] == 200


@pytest.mark.slow
def test_fuzzed_http_requests_never_get_a_5xx(stack):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from test_server_inputs import mostly_valid, search_bodies

    bodies = st.one_of(mostly_valid.map(lambda b: json.dumps(b).encode()), search_bodies.map(lambda b: json.dumps(b).encode()),
                       st.binary(max_size=200))
    ctypes = st.sampled_from(["application/json", "text/plain", "image/jpeg", "image/png", "application/x-www-form-urlencoded"])

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(raw=bodies, ctype=ctypes)
    def check(raw, ctype):
        got, _, body = http(stack.search_url, raw, headers={"Content-Type": ctype})
        assert got < 500, body

    check()


@pytest.mark.slow
def test_a_thousand_invocations_do_not_grow_memory(stack):
    proc = stack.runtime_process()
    image = base64.b64encode(make_image(3, size=(64, 48))).decode()
    bodies = [lambda i: {"query": f"query number {i}", "input_type": "text"},
              lambda i: {"query": f"doc{i % 24:02d}", "input_type": "id", "k": 5},
              lambda i: {"query": image, "input_type": "image", "k": 3},
              lambda i: {"query": "x", "input_type": "bogus"},
              lambda i: {"query": "no-such-id", "input_type": "id"}]

    def run(n, start):
        for i in range(start, start + n):
            out = stack.invoke(bodies[i % len(bodies)](i))
            assert out["statusCode"] < 500

    run(300, 0)  # warm: caches filled to their steady state, allocator pools grown
    before = proc.memory_info().rss
    run(1000, 300)
    grown_mb = (proc.memory_info().rss - before) / 2**20
    assert grown_mb < 12, f"RSS grew {grown_mb:.1f} MB over 1,000 invocations"
    assert stack.runtime_process().pid == proc.pid, "the runtime was restarted"


# ----------------------------------------------------------------------------- the gateway alone
def test_gateway_answers_504_after_its_timeout_and_keeps_the_emulator_serialised():
    """A stalled 'emulator' (an HTTP server that answers after 2 s) behind a gateway with a 0.5 s timeout."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from server.local.gateway import Gateway
    from server.local.invoker import Invoker

    active, overlaps = [0], []

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            active[0] += 1
            overlaps.append(active[0])
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(2.0)
            data = json.dumps({"statusCode": 200, "headers": {}, "body": "{}"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            active[0] -= 1

    fake = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    invoker = Invoker(f"http://127.0.0.1:{fake.server_address[1]}/invoke", call_timeout_s=10)
    gw = Gateway(("127.0.0.1", 0), invoker, timeout_s=0.5)
    threading.Thread(target=gw.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        got, headers, body = http(f"http://127.0.0.1:{gw.server_address[1]}/search", {"query": "x", "input_type": "text"})
        assert got == 504 and json.loads(body) == {"message": "Endpoint request timed out"}
        assert time.monotonic() - t0 < 1.8, "the gateway waited for the function instead of timing out"
        # A second request while the first still runs in the 'emulator': it waits its turn, times
        # out in the queue, and is never sent (the emulator must never see two at once).
        got, _, _ = http(f"http://127.0.0.1:{gw.server_address[1]}/search", {"query": "y", "input_type": "text"})
        assert got == 504
        got, _, body = http(f"http://127.0.0.1:{gw.server_address[1]}/nowhere", {"a": 1})
        assert got == 403 and json.loads(body) == {"message": "Missing Authentication Token"}
        time.sleep(2.5)
        assert overlaps == [1], "a timed-out invocation must still block the next one"
    finally:
        gw.shutdown(), gw.server_close(), fake.shutdown(), fake.server_close(), invoker.close()


def test_non_proxy_function_replies_become_502():
    from server.local.gateway import proxy_reply

    status, _, body = proxy_reply({"errorMessage": "boom", "errorType": "Runtime.ExitError"})
    assert status == 502 and json.loads(body) == {"message": "Internal server error"}
    status, headers, body = proxy_reply({"statusCode": 201, "headers": {"A": "b"}, "body": "aGk=", "isBase64Encoded": True})
    assert (status, headers, body) == (201, {"A": "b"}, b"hi")


# ----------------------------------------------------------------------------- an uninitialisable function
def test_missing_index_stack_answers_503_and_leaves_no_processes(tmp_path, tiny_model_dir):
    import psutil

    env = {"MODEL_PATH": str(tiny_model_dir), "INDEX_PATH": str(tmp_path / "absent"), "TORCH_THREADS": "1"}
    with LocalLambda(env=env, log=tmp_path / "log") as s:
        assert s.ready_status == 503
        got, _, body = http(s.health_url)
        assert got == 503 and json.loads(body)["error"]["code"] == "index_missing"
        got, headers, body = http(s.search_url, {"query": "two dogs", "input_type": "text"})
        assert got == 503 and headers["Retry-After"] and "python -m ingest" in json.loads(body)["error"]["message"]
        pids = [s.process.pid, s.runtime_process().pid]
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


# ----------------------------------------------------------------------------- python -m server.local
@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_cli_prints_the_curl_line_serves_and_stops_cleanly_on_ctrl_c(tmp_path, tiny_model_dir, tiny_encoder, verbose):
    """What `make demo` (scripts/demo.py) runs: start, poll GET /health, SIGINT at the end. The
    emulator's START/END/REPORT lines per invocation show only with --verbose."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import psutil
    from conftest import REPO

    build_index(tmp_path / "index", tiny_encoder, n=3)
    env = {**os.environ, "MODEL_PATH": str(tiny_model_dir), "INDEX_PATH": str(tmp_path / "index"), "TORCH_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "server.local", "--lambda-port", "0", "--gateway-port", "0",
                             *(["--verbose"] if verbose else [])],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "(Ctrl-C stops)" in line:
                break
        out = "".join(lines)
        curl = re.search(r'curl -XPOST "http://localhost:(\d+)/2015-03-31/functions/function/invocations" '
                         r"-d '\{\"query\": \"two dogs\", \"input_type\": \"text\"\}'", out)
        assert curl, out
        gateway = re.search(r"GET (http://127.0.0.1:\d+/health)", out).group(1)
        assert http(gateway)[0] == 200
        status, _, raw = http(f"http://127.0.0.1:{curl.group(1)}/2015-03-31/functions/function/invocations",
                              b'{"query": "two dogs", "input_type": "text"}')
        assert json.loads(raw)["statusCode"] == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == 2  # the emulator and the runtime
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
        out += proc.stdout.read()
        assert '"status": 200' in out  # the function's own line for each request stays
        assert ("START RequestId:" in out and "REPORT RequestId:" in out) == verbose, out[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_killing_the_owner_with_sigkill_leaves_no_emulator_behind(tmp_path, tiny_model_dir, tiny_encoder):
    """stop() never runs after kill -9; the emulator still goes (PR_SET_PDEATHSIG), taking the runtime."""
    import os
    import subprocess
    import sys

    import psutil
    from conftest import REPO

    build_index(tmp_path / "index", tiny_encoder, n=3)
    script = (f"from server.local import LocalLambda\n"
              f"s = LocalLambda(env={{'MODEL_PATH': {str(tiny_model_dir)!r}, 'INDEX_PATH': {str(tmp_path / 'index')!r}, "
              f"'TORCH_THREADS': '1'}}, log={str(tmp_path / 'log')!r}).start()\n"
              f"print(s.process.pid, s.runtime_process().pid, flush=True)\n"
              f"import time; time.sleep(120)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        owner.kill()
        owner.wait()
        procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
        gone, alive = psutil.wait_procs(procs, timeout=10)
        assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        if owner.poll() is None:
            owner.kill()
