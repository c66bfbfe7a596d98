"""The local gateway and the invocation front as HTTP servers: what they answer to methods and
paths the API does not define, to garbage, and to connections that never send a request.

Both run in-process here, in front of a recording stand-in for the emulator's invocation URL
(tests/test_server_limits.py), so each check sees whether the function would have been invoked.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from test_server_limits import RecordingEmulator

from server.local.front import InvokeFront
from server.local.gateway import Gateway
from server.local.invoker import Invoker

INVOKE_PATH = "/2015-03-31/functions/function/invocations"


@pytest.fixture
def servers(running):
    running[2].sizes.clear()
    return running


@pytest.fixture(scope="module")
def running():
    emulator = RecordingEmulator()
    invoker = Invoker(emulator.url, call_timeout_s=30)
    gw = Gateway(("127.0.0.1", 0), invoker, timeout_s=20, socket_timeout_s=0.5, max_connections=8)
    front = InvokeFront(("127.0.0.1", 0), invoker, timeout_s=20, socket_timeout_s=0.5, max_connections=8)
    for srv in (gw, front):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield gw.server_address[1], front.server_address[1], emulator
    for srv in (gw, front):
        srv.shutdown()
        srv.server_close()
    invoker.close()
    emulator.close()


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def json_reply(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


# The deployed API (infra/template.yaml) defines POST and OPTIONS on /search and nothing else. For
# any other method or resource a REST API answers MISSING_AUTHENTICATION_TOKEN, 403, "including the
# cases when the client attempts to invoke an unsupported API method or resource" (API Gateway
# developer guide, "Gateway response types").
MISSING_TOKEN = {"message": "Missing Authentication Token"}


@pytest.mark.parametrize("method, path", [("PUT", "/search"), ("DELETE", "/search"), ("GET", "/search"),
                                          ("PATCH", "/search"), ("FOO", "/search"), ("POST", "/nowhere"),
                                          ("POST", "/"), ("OPTIONS", "/health"), ("DELETE", "/health")])
def test_methods_and_paths_the_api_does_not_define_get_api_gateways_403(servers, method, path):
    gateway, _, emulator = servers
    status, headers, body = request(gateway, method, path, b"{}" if method != "GET" else None)
    assert (status, json.loads(body)) == (403, MISSING_TOKEN), body
    assert headers["Content-Type"] == "application/json"
    assert emulator.sizes == [], "the function is never invoked for them"


def test_the_routes_the_api_defines_still_reach_the_function(servers):
    gateway, _, emulator = servers
    assert request(gateway, "POST", "/search", b'{"query": "x", "input_type": "text"}')[0] == 200
    assert request(gateway, "OPTIONS", "/search")[0] == 200
    assert request(gateway, "GET", "/health")[0] == 200  # local only: the deployed API has no /health
    assert len(emulator.sizes) == 3


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                  b"POST /search HTTP/1.1\r\nContent-Length: nope\r\nBad Header\r\n\r\n",
                                  b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"])
def test_garbage_gets_a_json_error_from_both_servers(servers, data):
    gateway, front, emulator = servers
    for port in (gateway, front):
        status, body = json_reply(raw_exchange(port, data))
        assert 400 <= status < 600 and body["message"], body
    assert emulator.sizes == []


def test_the_invocation_front_answers_json_for_other_methods(servers):
    _, front, emulator = servers
    for method in ("GET", "PUT", "DELETE"):
        status, headers, body = request(front, method, INVOKE_PATH)
        assert status == 405 and headers["Allow"] == "POST" and json.loads(body)["message"], body
    status, _, body = request(front, "POST", "/elsewhere", b"{}")
    assert status == 404 and json.loads(body)["message"]
    assert emulator.sizes == []


def test_silent_connections_are_closed_after_the_socket_timeout(servers):
    gateway, front, _ = servers
    for port in (gateway, front):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        t0 = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, having sent nothing
        assert time.monotonic() - t0 < 5, "a half-open connection must not be held"
        sock.close()


def test_connections_beyond_the_bound_are_refused_at_once_not_queued(servers):
    """The 9th silent connection (bound 8) gets API Gateway's throttling status, then the
    server serves again once the silent ones time out."""
    gateway, _, _ = servers
    held = [socket.create_connection(("127.0.0.1", gateway), timeout=10) for _ in range(8)]
    try:
        time.sleep(0.1)
        extra = socket.create_connection(("127.0.0.1", gateway), timeout=10)
        t0 = time.monotonic()
        out = b""
        while chunk := extra.recv(65536):
            out += chunk
        extra.close()
        assert time.monotonic() - t0 < 0.4, "refused before the socket timeout, not after"
        status, body = json_reply(out)
        assert status == 429 and body["message"]
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while request(gateway, "GET", "/health")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
