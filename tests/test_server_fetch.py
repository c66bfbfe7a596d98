"""The URL fetcher against real HTTP servers on 127.0.0.1.

The default address policy refuses 127.0.0.1 (that is the point), so success-path tests pass a
test-only policy admitting exactly 127.0.0.1; the refusal tests use the real policy.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest
from conftest import make_image
from server_support import FileServer, send

from clipsearch.errors import ImageError, ImageTooLarge
from server.fetch import SafeFetcher, UrlFetchFailed, UrlRefused, is_public_address, sniff_image

JPEG = make_image(3)


def loopback_fetcher(**kw) -> SafeFetcher:
    return SafeFetcher(max_bytes=kw.pop("max_bytes", 100_000), is_allowed=lambda ip: str(ip) == "127.0.0.1", **kw)


def redirect(location: str):
    return send(302, {"Location": location}, b"")


def drip(h) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.end_headers()
    for _ in range(40):
        h.wfile.write(b"\xff")
        h.wfile.flush()
        time.sleep(0.1)


def chunked_flood(h) -> None:
    h.protocol_version = "HTTP/1.1"
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    block = b"\xff" * 8192
    try:
        for _ in range(50):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        h.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass  # the client hung up at its cap


@pytest.fixture(scope="module")
def srv():
    routes = {
        "/cat.jpg": send(200, {"Content-Type": "image/jpeg"}, JPEG),
        "/octet": send(200, {"Content-Type": "application/octet-stream"}, JPEG),
        "/page.html": send(200, {"Content-Type": "text/html"}, b"<html>"),
        "/fake.jpg": send(200, {"Content-Type": "image/jpeg"}, b"<html>not a jpeg</html>"),
        "/big-declared": send(200, {"Content-Type": "image/jpeg", "Content-Length": "99999999"}, b""),
        "/big-chunked": chunked_flood,
        "/drip": drip,
        "/missing": send(404, {}, b""),
        "/to-cat": redirect("/cat.jpg"),
        "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-localhost": redirect("http://localhost/cat.jpg"),
        "/to-file": redirect("file:///etc/passwd"),
        "/loop": redirect("/loop"),
        "/no-location": send(301, {}, b""),
    }
    with FileServer(routes) as s:
        yield s


def test_default_policy_refuses_private_addresses():
    refused = ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
               "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
               "::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::7f00:1", "198.18.0.1", "240.0.0.1"]
    allowed = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
    assert [a for a in refused if is_public_address(ipaddress.ip_address(a))] == []
    assert all(is_public_address(ipaddress.ip_address(a)) for a in allowed)


def test_a_local_server_is_refused_and_never_contacted(srv):
    fetcher = SafeFetcher(max_bytes=100_000)
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(UrlRefused, match="private or reserved"):
            fetcher.fetch(srv.url("/cat.jpg", host))
    assert srv.hits == []


def test_every_resolved_address_must_be_public():
    calls = []

    def resolver(host, port):
        calls.append(host)
        return ["93.184.216.34", "10.0.0.7"]  # one public, one private: refuse

    with pytest.raises(UrlRefused, match="10.0.0.7"):
        SafeFetcher(max_bytes=1000, resolver=resolver).fetch("https://images.example.com/a.jpg")
    assert calls == ["images.example.com"]


def test_success_connects_to_the_vetted_address_without_resolving_again(srv):
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])  # a rebinding DNS: the second answer would be private
    calls = []

    def rebinding(host, port):
        calls.append((host, port))
        return next(answers)

    data = loopback_fetcher(resolver=rebinding).fetch(srv.url("/cat.jpg", "images.test"))
    assert data == JPEG and calls == [("images.test", srv.port)]


def test_octet_stream_is_accepted_when_the_bytes_are_an_image(srv):
    assert loopback_fetcher().fetch(srv.url("/octet")) == JPEG


def test_redirects_are_followed_and_each_target_vetted(srv):
    assert loopback_fetcher().fetch(srv.url("/to-cat")) == JPEG
    with pytest.raises(UrlRefused, match="169.254.169.254"):
        loopback_fetcher().fetch(srv.url("/to-metadata"))
    with pytest.raises(UrlRefused):
        loopback_fetcher().fetch(srv.url("/to-file"))
    with pytest.raises(UrlFetchFailed, match="more than 3"):
        loopback_fetcher().fetch(srv.url("/loop"))
    with pytest.raises(UrlFetchFailed, match="without a Location"):
        loopback_fetcher().fetch(srv.url("/no-location"))


def test_each_redirect_hop_is_resolved_and_vetted(srv):
    names = {"images.test": ["127.0.0.1"], "localhost": ["::1"]}
    seen = []

    def resolver(host, port):
        seen.append(host)
        return names[host]

    with pytest.raises(UrlRefused, match="'localhost' resolves to ::1"):
        loopback_fetcher(resolver=resolver).fetch(srv.url("/to-localhost", "images.test"))
    assert seen == ["images.test", "localhost"]


@pytest.mark.parametrize("path, error, match", [
    ("/page.html", UrlFetchFailed, "text/html"),
    ("/fake.jpg", ImageError, "not a JPEG"),
    ("/missing", UrlFetchFailed, "HTTP 404"),
    ("/big-declared", ImageTooLarge, "99,999,999 bytes"),
    ("/big-chunked", ImageTooLarge, "limit is 100,000"),
])
def test_content_is_checked_before_decoding(srv, path, error, match):
    with pytest.raises(error, match=match):
        loopback_fetcher().fetch(srv.url(path))


def test_a_slow_drip_meets_the_overall_deadline(srv):
    t0 = time.monotonic()
    with pytest.raises(UrlFetchFailed, match="within 1 s"):
        loopback_fetcher(total_timeout_s=1.0).fetch(srv.url("/drip"))
    assert time.monotonic() - t0 < 2.5


def test_unreachable_port_is_a_clean_failure():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(UrlFetchFailed, match="fetching the URL failed"):
        loopback_fetcher().fetch(f"http://127.0.0.1:{port}/x.jpg")


@pytest.mark.parametrize("url, match", [
    ("ftp://example.com/a.jpg", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("//example.com/a.jpg", "relative"),
    ("http://user:pw@example.com/a.jpg", "credentials"),
    ("http://example.com:70000/a.jpg", "not a valid URL"),
    ("http:///a.jpg", "no host"),
])
def test_urls_refused_before_any_lookup(url, match):
    def resolver(host, port):
        raise AssertionError("must not resolve")

    with pytest.raises(UrlRefused, match=match):
        SafeFetcher(max_bytes=1000, resolver=resolver).fetch(url)


def test_control_characters_in_the_path_are_refused(srv):
    with pytest.raises(UrlRefused, match="cannot be requested"):
        loopback_fetcher().fetch(srv.url("/cat.jpg") + "\r\nX-Injected: 1")


def test_magic_bytes():
    assert sniff_image(JPEG) == "JPEG"
    assert sniff_image(make_image(1, fmt="PNG")) == "PNG"
    assert sniff_image(make_image(1, fmt="GIF")) == "GIF"
    assert sniff_image(make_image(1, fmt="WEBP")) == "WEBP"
    assert sniff_image(b"<svg") is None and sniff_image(b"") is None


# ----------------------------------------------------------------------------- slow servers
# Each plays a hostile server at the socket level on 127.0.0.1: no single recv ever waits long
# (so the 3 s socket timeout never fires), yet the exchange would last far past the total deadline.
def trickle(data: bytes, every_s: float = 0.05):
    def play(sock: socket.socket) -> None:
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(every_s)
    return play


def endless_continue(sock: socket.socket) -> None:
    while True:
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(0.01)


def silent(sock: socket.socket) -> None:
    time.sleep(30)  # accepts, reads the request, never answers


def trickled_body(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n")
    trickle(JPEG[:400], 0.05)(sock)


SLOW = {
    "status line": trickle(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\n" + b"x" * 200, 0.1),
    "headers": lambda s: (s.sendall(b"HTTP/1.1 200 OK\r\n"), trickle(b"X-Pad: " + b"a" * 400 + b"\r\n\r\n")(s)),
    "endless 100 Continue": endless_continue,
    "body": trickled_body,
    "no answer": silent,
}


class RawServer:
    """Accepts on 127.0.0.1, reads the request head, then hands the socket to `play`."""

    def __init__(self, play, tls: bool = False):
        self.play, self.tls = play, tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/slow.jpg"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(sock,), daemon=True).start()

    def _one(self, sock: socket.socket) -> None:
        with sock:
            if self.tls:  # nothing readable as an HTTP head arrives: go straight to the play
                return self.play(sock)
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                self.play(sock)
            except OSError:
                pass  # the client hung up: what a deadline does

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("name", [*SLOW, "TLS handshake"])
def test_the_total_deadline_bounds_the_whole_exchange(name):
    tls = name == "TLS handshake"  # the server never answers the ClientHello
    server = RawServer(silent if tls else SLOW[name], tls)
    total = 1.5
    fetcher = loopback_fetcher(total_timeout_s=total)
    # In a daemon thread, so a fetch that never ends fails this test instead of hanging the run.
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(error=_raised(fetcher.fetch, server.url)), daemon=True)
    t0 = time.monotonic()
    worker.start()
    worker.join(total + 10)
    elapsed = time.monotonic() - t0
    server.close()
    assert "error" in outcome, f"{name}: still fetching after {elapsed:.0f} s against a {total} s deadline"
    err = outcome["error"]
    assert isinstance(err, UrlFetchFailed) and err.code == "url_fetch_failed", repr(err)
    assert "within 1.5 s" in str(err), str(err)
    assert elapsed < total + 1.5, f"{name}: the fetch took {elapsed:.1f} s against a {total} s deadline"


def _raised(call, *args) -> BaseException | None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever it was
        return exc
    return None


def test_a_slow_server_is_a_400_from_the_handler_within_the_deadline(tiny_encoder, tmp_path, tiny_model_dir):
    """What the user sees: the documented 400 url_fetch_failed, not the function held until its timeout."""
    from server_support import build_index, reply

    from clipsearch.config import IndexSettings, ModelSettings, Settings
    from server.app import App

    build_index(tmp_path / "index", tiny_encoder, n=3)
    settings = Settings(model=ModelSettings(path=str(tiny_model_dir), threads=1),
                        index=IndexSettings(path=str(tmp_path / "index")))
    app = App(settings, encoder=tiny_encoder, fetcher=loopback_fetcher(total_timeout_s=1.0))
    server = RawServer(SLOW["no answer"])
    try:
        t0 = time.monotonic()
        status, _, body = reply(app.handle({"query": server.url, "input_type": "url"}))
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert (status, body["error"]["code"]) == (400, "url_fetch_failed"), body
    assert elapsed < 2.5
