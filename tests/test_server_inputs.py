"""Bad input never reaches a 5xx: a table of hostile requests, then a property-based fuzz (in-process)."""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
import zlib

import pytest
from conftest import make_image
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st
from server_support import build_index, proxy_event, reply

from clipsearch.config import IndexSettings, LimitSettings, ModelSettings, Settings
from server.app import App
from server.fetch import SafeFetcher

MAX_IMAGE_BYTES = 1_000_000


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_encoder, tiny_model_dir) -> App:
    path = tmp_path_factory.mktemp("inputs") / "index"
    build_index(path, tiny_encoder)
    s = Settings(model=ModelSettings(path=str(tiny_model_dir), threads=1), index=IndexSettings(path=str(path)),
                 limits=LimitSettings(max_image_bytes=MAX_IMAGE_BYTES, max_image_pixels=4_000_000))
    return App(s, encoder=tiny_encoder)


@pytest.fixture
def quiet():
    logger = logging.getLogger("clipsearch.server")
    level = logger.level
    logger.setLevel(logging.ERROR)  # errors (5xx) still show
    yield
    logger.setLevel(level)


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny valid-looking PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def text(**extra) -> dict:
    return {"query": "two dogs", "input_type": "text", **extra}


def body_event(raw: str | bytes, **kw) -> dict:
    return proxy_event(raw if isinstance(raw, str) else b64(raw), base64=not isinstance(raw, str), **kw)


PRIVATE_URLS = ["http://127.0.0.1/cat.jpg", "http://10.1.2.3/cat.jpg", "http://169.254.169.254/latest/meta-data/",
                "http://[::1]/cat.jpg", "http://localhost:8000/search", "http://0.0.0.0/", "http://192.168.1.1/",
                "http://[::ffff:127.0.0.1]/", "http://224.0.0.1/", "http://100.64.0.1/", "https://172.16.0.1/x.png",
                "http://user:secret@example.com/cat.jpg", "http://2130706433/", "http://[fe80::1]/"]

# (name, event, status, code); `event` is a direct-invocation body unless it is a proxy event.
BAD = [
    ("empty body", proxy_event(""), 400, "invalid_input"),
    ("no body", proxy_event(None), 400, "invalid_input"),
    ("null event", None, 400, "invalid_input"),
    ("array", [1, 2], 400, "invalid_input"),
    ("string", "two dogs", 400, "invalid_input"),
    ("10 MB body", proxy_event(json.dumps(text(query="x" * 10_000_000))), 413, "too_large"),
    ("malformed JSON", proxy_event('{"query": "two dogs", "input_type": "text"'), 400, "invalid_input"),
    ("JSON NaN", proxy_event('{"query": "x", "input_type": "text", "min_score": NaN}'), 400, "invalid_input"),
    ("deep nesting", proxy_event("[" * 100_000 + "]" * 100_000), 400, "invalid_input"),
    ("invalid UTF-8", body_event(b'{"query": "\xff\xfe", "input_type": "text"}'), 400, "invalid_input"),
    ("lone surrogate", proxy_event('{"query": "\ud800", "input_type": "text"}'), 400, "invalid_input"),
    ("bad base64 flag", proxy_event("not base64!!", base64=True), 400, "invalid_input"),
    ("query not a string", text(query=42), 400, "invalid_input"),
    ("query null", text(query=None), 400, "invalid_input"),
    ("blank text", text(query="   "), 400, "invalid_input"),
    ("text too long", text(query="dog " * 300), 400, "invalid_input"),
    ("k as string", text(k="10"), 400, "invalid_input"),
    ("k zero", text(k=0), 400, "invalid_input"),
    ("huge k", text(k=1_000_000), 400, "invalid_input"),
    ("k float", text(k=5.5), 400, "invalid_input"),
    ("k bool", text(k=True), 400, "invalid_input"),
    ("min_score NaN", text(min_score=float("nan")), 400, "invalid_input"),
    ("min_score inf", text(min_score=float("inf")), 400, "invalid_input"),
    ("min_score 2", text(min_score=2), 400, "invalid_input"),
    ("min_score string", text(min_score="0.5"), 400, "invalid_input"),
    ("missing input_type", {"query": "two dogs"}, 400, "invalid_input"),
    ("unknown input_type", text(input_type="video"), 400, "invalid_input"),
    ("input_type list", text(input_type=["text"]), 400, "invalid_input"),
    ("extra field", text(limit=5), 400, "invalid_input"),
    ("filters a list", text(filters=["orientation"]), 400, "invalid_input"),
    ("filters a string", text(filters="orientation=landscape"), 400, "invalid_input"),
    ("filter unknown field", text(filters={"secret": 1}), 400, "invalid_input"),
    ("filter not filterable", text(filters={"description": "dog"}), 400, "invalid_input"),
    ("filter bad range op", text(filters={"width": {"between": [1, 2]}}), 400, "invalid_input"),
    ("filter range not number", text(filters={"width": {"gt": "wide"}}), 400, "invalid_input"),
    ("filter nested values", text(filters={"orientation": [{"a": 1}]}), 400, "invalid_input"),
    ("filter empty list", text(filters={"orientation": []}), 400, "invalid_input"),
    ("filter key lone surrogate", text(filters={"\ud800": "x"}), 400, "invalid_input"),
    ("filter key lone surrogate in JSON", proxy_event('{"query": "x", "input_type": "text", "filters": {"\\ud800": 1}}'),
     400, "invalid_input"),
    ("filter value lone surrogate", text(filters={"orientation": "land\udc00scape"}), 400, "invalid_input"),
    ("filter list lone surrogate", text(filters={"orientation": ["portrait", "\ud83d"]}), 400, "invalid_input"),
    ("filter 401-digit integer", text(filters={"width": 10**400}), 400, "invalid_input"),
    ("filter range 401-digit integer", text(filters={"width": {"gt": 10**400}}), 400, "invalid_input"),
    ("filter list 401-digit integer", text(filters={"width": [64, -10**400]}), 400, "invalid_input"),
    ("filter 401-digit integer in JSON", proxy_event('{"query": "x", "input_type": "text", "filters": {"width": 1'
                                                     + "0" * 400 + '}}'), 400, "invalid_input"),
    ("filter 5000-digit integer", text(filters={"height": {"lte": 10**5000}}), 400, "invalid_input"),
    ("k 5000-digit integer", text(k=10**5000), 400, "invalid_input"),
    ("field name lone surrogate", {**text(), "\udfff": 1}, 400, "invalid_input"),
    ("query lone surrogate escape", proxy_event('{"query": "two \\ud800 dogs", "input_type": "text"}'), 400,
     "invalid_input"),
    ("bad base64 image", {"query": "this is not base64!", "input_type": "image"}, 400, "invalid_input"),
    ("non-image bytes", {"query": b64(b"hello, I am text"), "input_type": "image"}, 400, "invalid_image"),
    ("truncated JPEG", {"query": b64(make_image(1)[:300]), "input_type": "image"}, 400, "invalid_image"),
    ("SVG", {"query": b64(b'<svg xmlns="http://www.w3.org/2000/svg"/>'), "input_type": "image"}, 400, "invalid_image"),
    ("decompression bomb", {"query": b64(png_header_bomb()), "input_type": "image"}, 413, "image_too_large"),
    ("pixel cap", {"query": b64(png_header_bomb(3000, 3000)), "input_type": "image"}, 413, "image_too_large"),
    ("image over byte cap", {"query": b64(b"\xff\xd8\xff" + b"\0" * (MAX_IMAGE_BYTES + 10)), "input_type": "image"},
     413, "image_too_large"),
    ("raw body not an image", body_event(b"GIF89a-not-really", headers={"Content-Type": "image/gif"}), 400, "invalid_image"),
    ("raw body empty", proxy_event("", headers={"Content-Type": "image/png"}), 400, "invalid_input"),
    ("raw body unknown param", body_event(make_image(1), headers={"Content-Type": "image/jpeg"}, query={"x": "1"}),
     400, "invalid_input"),
    *[(f"raw body k={k!r}", body_event(make_image(1), headers={"Content-Type": "image/jpeg"}, query={"k": k}),
       400, "invalid_input") for k in ("1_0", " 10", "10 ", "+10", "10.0", "1e1", "0x10", "٣", "１０", "010", "", "-0")],
    *[(f"raw body min_score={m!r}", body_event(make_image(1), headers={"Content-Type": "image/jpeg"},
                                               query={"min_score": m}), 400, "invalid_input")
      for m in ("0_5", "nan", "inf", ".5", "0.5 ", "2", "1e999", "1" * 5000)],
    ("JSON body with a query-string option", proxy_event(json.dumps(text()), query={"k": "5"}), 400, "invalid_input"),
    ("JSON body with an unrelated query string", proxy_event(json.dumps(text()), query={"utm_source": "x"}), 400,
     "invalid_input"),
    ("data URL not base64", {"query": "data:image/png,abc", "input_type": "image"}, 400, "invalid_input"),
    ("file URL", {"query": "file:///etc/passwd", "input_type": "url"}, 400, "invalid_input"),
    ("s3 URL", {"query": "s3://bucket/key.jpg", "input_type": "url"}, 400, "invalid_input"),
    ("URL bad port", {"query": "http://example.com:99999/", "input_type": "url"}, 400, "url_refused"),
    ("URL no host", {"query": "http:///cat.jpg", "input_type": "url"}, 400, "url_refused"),
    *[(f"private URL {u}", {"query": u, "input_type": "url"}, 400, "url_refused") for u in PRIVATE_URLS],
    ("unknown id", {"query": "no-such-photo", "input_type": "id"}, 404, "not_found"),
    ("id too long", {"query": "x" * 600, "input_type": "id"}, 400, "invalid_input"),
    ("bad event method", {"httpMethod": 5, "body": "{}"}, 400, "bad_event"),
    ("bad event headers", {"httpMethod": "POST", "headers": ["a"], "body": "{}"}, 400, "bad_event"),
    ("bad event body type", {"httpMethod": "POST", "body": {"query": "x"}}, 400, "bad_event"),
    ("bad v2 event", {"version": "2.0", "requestContext": {"http": "POST"}}, 400, "bad_event"),
    ("DELETE", proxy_event(None, method="DELETE"), 405, "method_not_allowed"),
]


@pytest.mark.parametrize("name, event, status, code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_4xx(app, quiet, name, event, status, code):
    response = app.handle(event, None)
    got, headers, body = reply(response)
    assert (got, body["error"]["code"]) == (status, code), body
    message = body["error"]["message"]
    assert len(message) > 15 and "Traceback" not in message
    assert headers["Content-Type"] == "application/json"
    response["body"].encode("utf-8")  # what the runtime sends: no lone surrogate may reach it


def raw_image(query: dict[str, str]) -> dict:
    return body_event(make_image(2, size=(48, 64)), headers={"Content-Type": "image/jpeg"}, query=query)


def test_raw_image_options_parse_as_json_numbers(app, quiet):
    """The query string's k and min_score mean what the same text means in a JSON body."""
    for query, k in (({"k": "3"}, 3), ({"k": "3", "min_score": "-0.5"}, 3), ({"min_score": "5e-1"}, 10), ({}, 10)):
        status, _, body = reply(app.handle(raw_image(query), None))
        assert status == 200 and body["k"] == k, (query, body)
    _, _, body = reply(app.handle(raw_image({"k": "1_0"}), None))
    assert "k='1_0'" in body["error"]["message"] and "JSON" in body["error"]["message"]


@hsettings(max_examples=300, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(k=st.one_of(st.text(max_size=6), st.from_regex(r"\A[ +\-]?[0-9_]{1,4}(\.[0-9]*)?\s?\Z"),
                   st.integers(-5, 150).map(str)))
def test_fuzzed_query_string_k_is_taken_only_as_json_would_take_it(app, quiet, k):
    status, _, body = reply(app.handle(raw_image({"k": k}), None))
    as_json = None
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", k):
        as_json = int(k)
    if as_json is not None and 1 <= as_json <= 100:
        assert status == 200 and body["k"] == as_json, (k, body)
    else:
        assert status == 400 and body["error"]["code"] == "invalid_input", (k, body)


def test_error_messages_stay_short_whatever_the_input(app, quiet):
    many_filters = {f"field{i}": i for i in range(50_000)}
    for event in (text(filters=many_filters), {**{f"x{i}": 1 for i in range(10_000)}, **text()},
                  text(query="q" * 100_000), text(filters={"orientation": ["a" * 5000]})):
        status, _, body = reply(app.handle(event, None))
        assert status == 400 and len(body["error"]["message"]) < 600, body["error"]["message"][:200]


def test_the_service_still_answers_after_the_table(app):
    status, _, body = reply(app.handle(text(k=2), None))
    assert status == 200 and body["count"] == 2


# ----------------------------------------------------------------------------- fuzz
# Text that may hold lone surrogates (a JSON "\\ud800" escape decodes to one), and integers far
# beyond a float's range (JSON numbers have no size limit; Python parses up to 4,300 digits).
hostile_text = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=12)
huge_ints = st.one_of(st.sampled_from([10**400, -10**400, 2**1024, 10**309, 10**4000]), st.integers())
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), huge_ints,
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), hostile_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=10), hostile_text), inner, max_size=4)),
    max_leaves=12)
fields = {
    "query": st.one_of(st.text(max_size=60), st.sampled_from(["doc01", "doc99", "http://10.0.0.1/a.png",
                                                              "https://example.com/a.jpg", b64(make_image(2)),
                                                              b64(png_header_bomb())]), json_values),
    "input_type": st.one_of(st.sampled_from(["text", "image", "url", "id"]), json_values),
    "k": st.one_of(st.integers(-5, 150), json_values),
    "filters": st.one_of(st.dictionaries(st.one_of(st.sampled_from(["orientation", "width", "photographer", "nope", ""]),
                                                   hostile_text), json_values, max_size=3), json_values),
    "min_score": st.one_of(st.floats(-2, 2), json_values),
}
search_bodies = st.fixed_dictionaries({"query": fields["query"], "input_type": fields["input_type"]},
                                      optional={"k": fields["k"], "filters": fields["filters"],
                                                "min_score": fields["min_score"], "extra": json_values})
raw_bodies = st.one_of(search_bodies.map(lambda b: json.dumps(b)), st.text(max_size=80),
                       st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
headers = st.dictionaries(st.sampled_from(["Content-Type", "content-type", "Origin", "X", 1]),
                          st.one_of(st.sampled_from(["application/json", "image/png", "image/jpeg"]), json_values),
                          max_size=3)


@st.composite
def rest_events(draw):
    raw = draw(raw_bodies)
    encoded = draw(st.booleans())
    event = {"httpMethod": draw(st.one_of(st.sampled_from(["POST", "GET", "OPTIONS", "PUT"]), json_values)),
             "path": draw(st.sampled_from(["/search", "/health", "/", "/x"])), "headers": draw(st.one_of(headers, json_values)),
             "queryStringParameters": draw(st.one_of(st.none(), st.dictionaries(st.sampled_from(["k", "min_score", "z"]),
                                                                                st.text(max_size=5), max_size=2))),
             "body": draw(st.one_of(st.just(b64(raw.encode("utf-8", "surrogatepass")) if encoded else raw), json_values)),
             "isBase64Encoded": draw(st.one_of(st.just(encoded), json_values))}
    return event


@st.composite
def http_events(draw):
    return {"version": "2.0", "rawPath": draw(st.sampled_from(["/search", "/health"])),
            "requestContext": draw(st.one_of(st.fixed_dictionaries({"http": st.fixed_dictionaries(
                {"method": st.sampled_from(["POST", "GET", "OPTIONS"])})}), json_values)),
            "headers": draw(st.one_of(headers, json_values)), "body": draw(raw_bodies),
            "isBase64Encoded": draw(st.booleans())}


@st.composite
def damaged_images(draw) -> str:
    """A real JPEG/PNG/GIF/WebP with a few bytes overwritten or cut: the decoder's hostile inputs."""
    fmt = draw(st.sampled_from(["JPEG", "PNG", "GIF", "WEBP"]))
    data = bytearray(make_image(draw(st.integers(0, 50)), size=(draw(st.integers(1, 80)), draw(st.integers(1, 80))), fmt=fmt))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return b64(bytes(data[:cut]) if draw(st.booleans()) else bytes(data))


filter_specs = st.dictionaries(
    st.one_of(st.sampled_from(["orientation", "width", "height", "photographer", "source", "featured", "aspect_ratio"]),
              hostile_text),
    st.one_of(st.text(max_size=8), st.integers(-5, 100), st.booleans(), st.floats(allow_nan=False), hostile_text,
              huge_ints, st.lists(st.one_of(st.text(max_size=5), st.integers(0, 99), hostile_text, huge_ints,
                                            json_values), min_size=1, max_size=3),
              st.fixed_dictionaries({}, optional={"gt": st.one_of(st.floats(-1e3, 1e3), huge_ints),
                                                  "lte": st.one_of(st.integers(-100, 100), huge_ints, hostile_text)})),
    max_size=2)
mostly_valid = st.fixed_dictionaries(
    {"input_type": st.sampled_from(["text", "image", "id", "url"])},
    optional={"k": st.integers(1, 100), "min_score": st.floats(-1, 1), "filters": filter_specs},
).flatmap(lambda body: st.builds(lambda q: {**body, "query": q}, {
    "text": st.text(min_size=1, max_size=200),
    "image": damaged_images(),
    "id": st.one_of(st.sampled_from([f"doc{i:02d}" for i in range(30)]), st.text(min_size=1, max_size=20)),
    "url": st.builds(lambda host, path: f"http://{host}/{path}", st.sampled_from(["example.com", "10.0.0.1", "[::1]"]),
                     st.text(max_size=10)),
}[body["input_type"]]))
proxied = mostly_valid.map(lambda b: proxy_event(json.dumps(b)))

events = st.one_of(mostly_valid, proxied, search_bodies, json_values, rest_events(), http_events())


@pytest.fixture(scope="module")
def fuzz_app(app) -> App:
    """The same app, its URL fetcher pointed at a fixed private address: fuzzed URLs never leave the host."""
    fetcher = SafeFetcher(max_bytes=MAX_IMAGE_BYTES, resolver=lambda host, port: ["10.9.9.9"])
    return App(app.settings, encoder=app.service.encoder, index=app.service.index, fetcher=fetcher)


@hsettings(max_examples=300, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(filters=filter_specs, as_json=st.booleans())
def test_fuzzed_filters_are_a_400_or_results_never_a_5xx(app, quiet, filters, as_json):
    """Hostile filter keys and values (lone surrogates, huge integers, nesting), as Python values
    (a direct invocation) and as JSON text in a proxy event (what API Gateway delivers)."""
    body = text(filters=filters)
    if as_json:
        try:
            raw = json.dumps(body)  # lone surrogates become \\udXXX escapes
        except ValueError:  # an integer Python will not print (over 4,300 digits)
            return
        event = proxy_event(raw)
    else:
        event = body
    response = app.handle(event, None)
    response["body"].encode("utf-8")  # no lone surrogate may reach the runtime's UTF-8 encoder
    status, _, out = reply(response)
    assert status in (200, 400), out
    if status == 400:
        assert out["error"]["code"] == "invalid_input" and "Traceback" not in out["error"]["message"]


@pytest.mark.slow
@hsettings(max_examples=3000, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(event=events)
def test_fuzzed_events_never_get_a_5xx(fuzz_app, quiet, event):
    status, headers, body = reply(fuzz_app.handle(event, None))
    assert status < 500, body
    if status >= 400:
        assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    elif status == 200 and "results" in body:
        assert len(body["results"]) == body["count"] <= body["k"]
