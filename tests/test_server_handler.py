"""The handler fed JSON events in-process: the tiny random CLIP, a real FAISS index in a temp dir."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import replace

import numpy as np
import pytest
from conftest import EVENTS, make_image
from server_support import FileServer, build_index, proxy_event, reply, send

from clipsearch.config import IndexSettings, LimitSettings, ModelSettings, ServerSettings, Settings
from clipsearch.index.faiss_index import FaissIndex
from server.app import App
from server.fetch import SafeFetcher

ORIGIN = "http://localhost:8501"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_encoder):
    path = tmp_path_factory.mktemp("server-index") / "index"
    build_index(path, tiny_encoder)
    return path


@pytest.fixture(scope="module")
def settings(index_dir, tiny_model_dir) -> Settings:
    return Settings(model=ModelSettings(path=str(tiny_model_dir), threads=1), index=IndexSettings(path=str(index_dir)),
                    server=ServerSettings(cors_allow_origins=(ORIGIN,)),
                    limits=LimitSettings(max_image_bytes=1_000_000, max_image_pixels=4_000_000))


@pytest.fixture(scope="module")
def app(settings, tiny_encoder) -> App:
    return App(settings, encoder=tiny_encoder)


def call(app: App, event) -> tuple[int, dict, dict | None]:
    return reply(app.handle(event, None))


def search(app: App, **body) -> tuple[int, dict, dict | None]:
    return call(app, body)


# ----------------------------------------------------------------------------- event shapes
@pytest.mark.parametrize("name, k", [("direct_text", 3), ("rest_v1_text", 2), ("http_v2_text", 10),
                                     ("rest_v1_base64", 4)])
def test_sample_events_answer_ranked_results(app, name, k):
    status, headers, body = call(app, json.loads((EVENTS / f"{name}.json").read_text()))
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert body["k"] == k and body["model"] == "clipsearch/tiny-test"
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == body["count"] <= k
    for r in body["results"]:
        assert {"id", "score", "path", "width", "height", "orientation", "photographer", "description"} <= set(r)
    assert set(body["took_ms"]) == {"encode", "search", "total"}
    assert body["took_ms"]["total"] >= body["took_ms"]["encode"] + body["took_ms"]["search"] - 0.01


def test_a_function_url_request_is_served_as_an_http_api_v2_event(app):
    """Function URLs send payload format 2.0, as HTTP APIs do, and take the same proxy reply."""
    status, headers, body = call(app, json.loads((EVENTS / "function_url_text.json").read_text()))
    assert status == 200 and body["k"] == 5 and headers["Content-Type"] == "application/json", body


@pytest.mark.parametrize("name, kind", [
    ("alb_request", "Application Load Balancer"),
    ("alb_multivalue_request", "Application Load Balancer"),
    ("lattice_v1_request", "VPC Lattice"),
    ("lattice_v2_request", "VPC Lattice"),
    ("websocket_message", "WebSocket"),
    ("websocket_disconnect", "WebSocket"),
])
def test_event_kinds_not_served_are_refused_by_name(app, name, kind):
    """Not read as another kind ("requestContext.http.method must be a string") nor as a direct
    invocation ("input_type is missing"): the answer names the kind and what is served."""
    status, headers, body = call(app, json.loads((EVENTS / f"{name}.json").read_text()))
    assert status == 400 and body["error"]["code"] == "bad_event", body
    message = body["error"]["message"]
    assert message.startswith("unsupported event kind") and kind in message and "function URL" in message


def test_rest_event_filter_applies(app):
    _, _, body = call(app, json.loads((EVENTS / "rest_v1_text.json").read_text()))
    assert body["count"] == 2 and all(r["orientation"] == "landscape" for r in body["results"])


def test_cors_origin_echoed_only_when_allowed(app):
    _, headers, _ = call(app, json.loads((EVENTS / "rest_v1_text.json").read_text()))
    assert headers["Access-Control-Allow-Origin"] == ORIGIN and headers["Vary"] == "Origin"
    _, headers, _ = call(app, proxy_event('{"query": "x", "input_type": "text"}', headers={"Origin": "https://evil.example"}))
    assert not any(h.lower().startswith("access-control") for h in headers)
    status, headers, _ = call(app, proxy_event("{", headers={"Origin": ORIGIN}))  # errors carry CORS too
    assert status == 400 and headers["Access-Control-Allow-Origin"] == ORIGIN


def test_preflight_allowed_and_refused_origins(app):
    status, headers, body = call(app, json.loads((EVENTS / "rest_v1_options.json").read_text()))
    assert status == 204 and body is None
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "x-api-key" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = call(app, json.loads((EVENTS / "http_v2_options.json").read_text()))
    assert status == 204 and "Access-Control-Allow-Origin" not in headers


def test_health_route_and_wrong_method(app):
    status, _, body = call(app, proxy_event(None, method="GET", path="/health"))
    assert status == 200 and body["count"] == 24 and body["model"] == "clipsearch/tiny-test"
    status, headers, body = call(app, proxy_event(None, method="GET"))
    assert status == 405 and headers["Allow"] == "POST, OPTIONS" and body["error"]["code"] == "method_not_allowed"


def test_a_random_weight_model_is_flagged_in_every_answer(app, settings, tiny_encoder, monkeypatch):
    """The tiny model is a clipsearch.modelgen stand-in: its rankings mean nothing, and clients are told."""
    assert tiny_encoder.random_weights
    status, _, body = search(app, query="two dogs", input_type="text", k=2)
    assert status == 200 and "random weights" in body["warning"] and "MODEL_PATH" in body["warning"]
    assert call(app, proxy_event(None, method="GET", path="/health"))[2]["random_weights"] is True
    monkeypatch.setattr(tiny_encoder, "random_weights", False)  # as a real checkpoint's encoder
    status, _, body = search(app, query="two dogs", input_type="text", k=2)
    assert status == 200 and "warning" not in body
    assert call(app, proxy_event(None, method="GET", path="/health"))[2]["random_weights"] is False


def test_the_answer_says_which_model_and_family_scored_it(app):
    """Scores are cosines for every family, on each family's own scale: the answer names both."""
    status, _, body = search(app, query="two dogs", input_type="text", k=2)
    assert status == 200 and body["model"] == "clipsearch/tiny-test" and body["family"] == "clip"
    health = call(app, proxy_event(None, method="GET", path="/health"))[2]
    assert health["family"] == "clip" and health["suggested_min_score"] == 0.28


# ----------------------------------------------------------------------------- input types
def test_image_query_finds_the_same_image_first(app):
    b64 = base64.b64encode(make_image(5, size=(64, 48))).decode()
    status, _, body = search(app, query=b64, input_type="image", k=3)
    assert status == 200 and body["results"][0]["id"] == "doc05"
    assert body["results"][0]["score"] > 0.999


def test_image_query_accepts_data_urls_and_line_breaks(app):
    b64 = base64.b64encode(make_image(7, size=(64, 48), fmt="PNG")).decode()
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))  # what `base64` prints by default
    for query in ("data:image/png;base64," + b64, wrapped):
        status, _, body = search(app, query=query, input_type="image", k=1)
        assert status == 200 and body["results"][0]["id"] == "doc07"


def test_raw_image_body_as_api_gateway_delivers_binary_media(app):
    data = make_image(9, size=(64, 48))
    event = proxy_event(base64.b64encode(data).decode(), headers={"Content-Type": "image/jpeg"}, base64=True,
                        query={"k": "2"})
    status, _, body = call(app, event)
    assert status == 200 and body["k"] == 2 and body["results"][0]["id"] == "doc09"
    event["queryStringParameters"] = {"k": "two"}
    status, _, body = call(app, event)
    assert status == 400 and "k='two'" in body["error"]["message"]


def test_id_query_excludes_the_document_itself(app, index_dir):
    status, _, body = search(app, query="doc03", input_type="id", k=5)
    assert status == 200 and body["count"] == 5
    ids = [r["id"] for r in body["results"]]
    assert "doc03" not in ids
    # The same neighbours as searching with the stored vector, minus the document itself.
    index = FaissIndex.load(index_dir)
    expected = [h.id for h in index.search(index.get("doc03").vector, 6) if h.id != "doc03"][:5]
    assert ids == expected


def test_url_query_success_path_with_a_test_only_address_policy(settings, tiny_encoder):
    """127.0.0.1 is refused by the real policy; this app's fetcher admits exactly that address."""
    image = make_image(11, size=(64, 48))
    fetcher = SafeFetcher(max_bytes=settings.limits.max_image_bytes, is_allowed=lambda ip: str(ip) == "127.0.0.1")
    app = App(settings, encoder=tiny_encoder, fetcher=fetcher)
    with FileServer({"/cat.jpg": send(200, {"Content-Type": "image/jpeg"}, image)}) as srv:
        status, _, body = search(app, query=srv.url("/cat.jpg"), input_type="url", k=2)
    assert status == 200 and body["results"][0]["id"] == "doc11"


def test_an_image_url_under_input_type_image_is_fetched_like_a_url_query(settings, tiny_encoder):
    """What the original client sends: {"query": "https://...jpg", "input_type": "image"}."""
    image = make_image(12, size=(48, 64))
    fetcher = SafeFetcher(max_bytes=settings.limits.max_image_bytes, is_allowed=lambda ip: str(ip) == "127.0.0.1")
    app = App(settings, encoder=tiny_encoder, fetcher=fetcher)
    with FileServer({"/cat.jpg": send(200, {"Content-Type": "image/jpeg"}, image)}) as srv:
        for url in (srv.url("/cat.jpg"), srv.url("/cat.jpg").replace("http://", "HTTP://")):
            status, _, body = search(app, query=url, input_type="image", k=2)
            assert status == 200 and body["results"][0]["id"] == "doc12", body
        assert srv.hits == ["/cat.jpg", "/cat.jpg"]


def test_an_image_url_under_input_type_image_has_the_same_ssrf_guard(app):
    with FileServer({"/cat.jpg": send(200, {"Content-Type": "image/jpeg"}, make_image(1))}) as srv:
        for url in (srv.url("/cat.jpg"), srv.url("/cat.jpg", "localhost"), "http://169.254.169.254/latest/meta-data/",
                    "http://[::ffff:127.0.0.1]/x.jpg", "http://user:pw@example.com/a.jpg"):
            status, _, body = search(app, query=url, input_type="image")
            assert status == 400 and body["error"]["code"] == "url_refused", (url, body)
        assert srv.hits == [], "the server must never have been contacted"
    status, _, body = search(app, query="https://example.com/" + "a" * 2100 + ".jpg", input_type="image")
    assert status == 400 and "2048" in body["error"]["message"]


B64_IMAGE = base64.b64encode(make_image(3, size=(64, 48))).decode()


@pytest.mark.parametrize("body, status, hint", [
    ({"query": "two dogs on a beach", "input_type": "image"}, 400, 'input_type "text"'),
    ({"query": B64_IMAGE, "input_type": "text"}, 400, 'input_type "image"'),
    ({"query": "data:image/png;base64," + B64_IMAGE[:40], "input_type": "text"}, 200, None),  # short: fine as text
    ({"query": B64_IMAGE, "input_type": "url"}, 400, 'input_type "image"'),
    ({"query": "two dogs", "input_type": "url"}, 400, 'input_type "text"'),
    ({"query": "https://example.com/dog.jpg", "input_type": "id"}, 404, 'input_type "url"'),
    ({"query": "two dogs on a beach", "input_type": "id"}, 404, 'input_type "text"'),
    ({"query": "https://example.com/dog.jpg"}, 400, '"url"'),
    ({"query": "ftp://example.com/dog.jpg", "input_type": "image"}, 400, "http(s)"),
])
def test_a_wrong_input_type_gets_a_suggestion(app, body, status, hint):
    got, _, out = call(app, body)
    assert got == status, out
    if hint is not None:
        assert hint in out["error"]["message"], out["error"]["message"]


def test_a_url_sent_as_text_is_searched_as_text_not_fetched(app):
    """Text may legitimately hold a URL: the suggestion is for errors, never a reinterpretation."""
    with FileServer({"/cat.jpg": send(200, {"Content-Type": "image/jpeg"}, make_image(1))}) as srv:
        status, _, body = search(app, query=srv.url("/cat.jpg"), input_type="text", k=2)
        assert status == 200 and body["count"] == 2
        assert srv.hits == []


def test_url_query_to_a_local_server_is_refused_by_default(app):
    with FileServer({"/cat.jpg": send(200, {"Content-Type": "image/jpeg"}, make_image(1))}) as srv:
        for host in ("127.0.0.1", "localhost"):
            status, _, body = search(app, query=srv.url("/cat.jpg", host), input_type="url")
            assert status == 400 and body["error"]["code"] == "url_refused", body
        assert srv.hits == [], "the server must never have been contacted"


def test_min_score_and_filters(app):
    status, _, body = search(app, query="a photo", input_type="text", k=100, min_score=-1)
    assert status == 200 and body["count"] == 24
    floor = body["results"][10]["score"] - 1e-6  # scores are reported rounded to 6 decimals
    _, _, body = search(app, query="a photo", input_type="text", k=100, min_score=floor)
    assert body["count"] == 11 and all(r["score"] >= floor for r in body["results"])
    _, _, body = search(app, query="a photo", input_type="text", k=100,
                        filters={"photographer": ["ph1", "ph2"], "width": {"gte": 64}})
    assert body["count"] == 8 and {r["photographer"] for r in body["results"]} == {"ph1", "ph2"}
    _, _, body = search(app, query="a photo", input_type="text", filters={"photographer": "nobody"})
    assert body == {**body, "results": [], "count": 0}


def test_a_request_s_filters_are_parsed_once(app, monkeypatch):
    import clipsearch.index.filters as filters

    parsed = []
    real = filters._parse_one
    monkeypatch.setattr(filters, "_parse_one", lambda name, spec: parsed.append(name) or real(name, spec))
    status, _, body = search(app, query="a photo", input_type="text", k=100,
                             filters={"photographer": ["ph1", "ph2"], "width": {"gte": 64}})
    assert status == 200 and body["count"] == 8
    assert sorted(parsed) == ["photographer", "width"]  # at the edge; the index takes the parsed conditions


def test_the_answer_s_fields_and_their_order_on_the_wire(app):
    response = app.handle({"query": "a photo", "input_type": "text", "k": 2}, None)
    body = json.loads(response["body"])
    assert list(body) == ["results", "count", "k", "model", "family", "took_ms", "cached", "warning"]
    assert list(body["took_ms"]) == ["encode", "search", "total"]
    assert list(body["results"][0])[:2] == ["id", "score"] and body["count"] == len(body["results"]) == 2
    # The total is the whole request's: parsing and validation included, so never under its parts.
    assert body["took_ms"]["total"] >= body["took_ms"]["encode"] + body["took_ms"]["search"] - 0.002


def test_text_embeddings_are_cached(settings, tiny_encoder):
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tiny_encoder, name)

        def encode_text(self, text):
            calls.append(text)
            return tiny_encoder.encode_text(text)

    app = App(settings, encoder=Counting())
    first = search(app, query="two dogs", input_type="text")[2]
    second = search(app, query="two dogs", input_type="text")[2]
    search(app, query="three cats", input_type="text")
    assert calls == ["two dogs", "three cats"]
    assert first["results"] == second["results"]
    # The answer says so: no encode happened (the page shows "cached", not "encode 0.0 ms").
    assert first["cached"] is False and first["took_ms"]["encode"] > 0
    assert second["cached"] is True and second["took_ms"]["encode"] == 0
    assert set(second["took_ms"]) == {"encode", "search", "total"}  # the same fields as before
    doc = search(app, query="doc01", input_type="id")[2]
    assert doc["cached"] is False
    cached = app.service.text_cache.get("two dogs")
    assert not cached.flags.writeable
    np.testing.assert_allclose(cached, tiny_encoder.encode_text("two dogs")[0], atol=1e-6)


def test_one_json_log_line_per_request_with_request_id(app, caplog):
    class Ctx:
        aws_request_id = "req-123"

    logging.getLogger("clipsearch.server").addHandler(caplog.handler)
    try:
        app.handle({"query": "two dogs", "input_type": "text"}, Ctx())
        app.handle({"query": "two dogs", "input_type": "nope"}, Ctx())
    finally:
        logging.getLogger("clipsearch.server").removeHandler(caplog.handler)
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    assert len(lines) == 2 and all(line["request_id"] == "req-123" for line in lines)
    assert lines[0]["status"] == 200 and lines[0]["input_type"] == "text" and "encode" in lines[0]["took_ms"]
    assert "two dogs" not in json.dumps(lines[0]), "query text is not logged, only its length"
    assert lines[1]["status"] == 400 and lines[1]["error"] == "invalid_input"


# ----------------------------------------------------------------------------- init failures
def test_missing_index_answers_503_with_how_to_fix_then_recovers(tmp_path, settings, tiny_encoder):
    empty = tmp_path / "nothing-here"
    s = replace(settings, index=replace(settings.index, path=str(empty)))
    app = App(s, encoder=tiny_encoder, retry_init_s=3600)
    for event in ({"query": "x", "input_type": "text"}, proxy_event(None, method="GET", path="/health")):
        status, headers, body = call(app, event)
        assert status == 503 and body["error"]["code"] == "index_missing"
        assert "python -m ingest" in body["error"]["message"] and int(headers["Retry-After"]) > 0
    build_index(empty, tiny_encoder, n=3)
    assert call(app, {"query": "x", "input_type": "text"})[0] == 503  # not retried before retry_init_s
    app.retry_init_s = 0
    status, _, body = call(app, {"query": "x", "input_type": "text"})
    assert status == 200 and body["count"] == 3


def test_model_mismatch_answers_503(tmp_path, settings, tiny_encoder):
    other = FaissIndex(tmp_path / "other", model_id="openai/clip-vit-base-patch32", dim=512)
    other.upsert([]), other.save()
    app = App(replace(settings, index=replace(settings.index, path=str(tmp_path / "other"))), encoder=tiny_encoder)
    status, _, body = call(app, {"query": "x", "input_type": "text"})
    assert status == 503 and body["error"]["code"] == "model_mismatch"
    assert "clip-vit-base-patch32" in body["error"]["message"] and "re-ingest" in body["error"]["message"]


def test_unloadable_model_and_bad_settings_answer_503_not_crash(tmp_path):
    app = App(Settings(model=ModelSettings(path=str(tmp_path / "no-model")), index=IndexSettings(path=str(tmp_path))),
              retry_init_s=3600)
    status, _, body = call(app, {"query": "x", "input_type": "text"})
    assert status == 503 and body["error"]["code"] == "init_failed" and "no-model" in body["error"]["message"]
    app = App.from_env({"TORCH_THREADS": "many"})
    status, _, body = call(app, {"query": "x", "input_type": "text"})
    assert status == 503 and body["error"]["code"] == "bad_configuration" and "TORCH_THREADS" in body["error"]["message"]


def test_an_unexpected_bug_is_a_logged_500_without_details(settings, tiny_encoder, caplog):
    class Broken:
        def __getattr__(self, name):
            return getattr(tiny_encoder, name)

        def encode_text(self, text):
            raise RuntimeError("secret internal detail")

    app = App(settings, encoder=Broken())
    logging.getLogger("clipsearch.server").addHandler(caplog.handler)
    try:
        status, _, body = search(app, query="x", input_type="text")
    finally:
        logging.getLogger("clipsearch.server").removeHandler(caplog.handler)
    assert status == 500 and body["error"]["code"] == "internal"
    assert "secret" not in json.dumps(body)
    logged = json.loads(caplog.records[-1].getMessage())
    assert "RuntimeError: secret internal detail" in logged["traceback"]


@pytest.mark.parametrize("preload", [False, True])
def test_image_tower_loads_lazily_unless_preloaded(settings, preload):
    """The app builds its own encoder here (no fixture): text tower at init, vision on first use."""
    app = App(replace(settings, model=replace(settings.model, preload_image_tower=preload, threads=None)))
    health = call(app, proxy_event(None, method="GET", path="/health"))[2]
    assert health["towers"] == (["text", "vision"] if preload else ["text"])
    status, _, body = search(app, query=base64.b64encode(make_image(2, size=(48, 64))).decode(), input_type="image", k=1)
    assert status == 200 and body["results"][0]["id"] == "doc02"
    assert call(app, proxy_event(None, method="GET", path="/health"))[2]["towers"] == ["text", "vision"]
    assert app.settings.model.threads == 1  # TORCH_THREADS unset: one thread for a single query


@pytest.mark.parametrize("encoder, cpus, env, expected", [
    ("torch", 8, {}, 1),  # OpenMP workers spin: one thread, always
    ("torch", 8, {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "10240"}, 1),
    ("onnx", 2, {}, 2),  # off Lambda: the CPUs this process may use
    ("onnx", 1, {}, 1),
    ("onnx", 16, {}, 4),  # capped: a short query does not scale further
    ("onnx", 2, {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1152"}, 1),  # 0.65 vCPU of quota
    ("onnx", 2, {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008"}, 1),  # 1.7 vCPUs (the emulator's default)
    ("onnx", 2, {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3538"}, 2),  # two whole vCPUs
    ("onnx", 6, {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "10240"}, 4),
    ("onnx", 2, {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "lots"}, 2),  # unreadable: ignored
])
def test_query_threads_follow_the_encoder_and_the_cpu_share(monkeypatch, encoder, cpus, env, expected):
    from server.app import query_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert query_threads(encoder, env) == expected


def test_onnx_app_takes_its_thread_count_from_the_cpu_share(monkeypatch, settings):
    """TORCH_THREADS unset with the ONNX encoder: the app asks query_threads, not a constant."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1152")
    built = {}

    def fake_load_encoder(s, load):
        built["threads"] = s.threads
        raise RuntimeError("stop here")  # the thread count is all this test needs

    monkeypatch.setattr("clipsearch.models.load_encoder", fake_load_encoder)
    app = App(replace(settings, model=replace(settings.model, encoder="onnx", threads=None)))
    assert built["threads"] == 1 and app.init_error is not None


def test_a_reply_holding_a_lone_surrogate_is_still_utf8():
    """awslambdaric encodes the reply as UTF-8 (ensure_ascii=False on the python3.12+ runtimes):
    a lone surrogate there fails the invocation, which API Gateway answers 502."""
    from server.events import proxy_response

    for value in ("\ud800", "plain ascii", "café ✓"):
        out = proxy_response(400, {"error": {"code": "x", "message": value}})
        out["body"].encode("utf-8")
        assert json.loads(out["body"])["error"]["message"] == value
    assert "café ✓" in proxy_response(200, {"m": "café ✓"})["body"]  # readable text stays readable
