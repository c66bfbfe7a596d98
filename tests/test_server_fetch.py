"""The URL fetcher against real HTTP servers on 127.0.0.1.

The default address policy refuses 127.0.0.1 (that is the point), so success-path tests pass a
test-only policy admitting exactly 127.0.0.1; the refusal tests use the real policy.
"""

from __future__ import annotations

import ipaddress
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
    with pytest.raises(UrlFetchFailed, match="longer than"):
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
