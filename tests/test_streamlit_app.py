"""streamlit_app.py under Streamlit's AppTest, against a real HTTP stub of the API on 127.0.0.1:
each test counts the requests the stub saw and checks what the page shows."""

from __future__ import annotations

import base64

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, make_image
from stub_http import GATEWAY_TIMEOUT, Reply, StubApi, free_port, ok_body, png

APP = str(REPO / "streamlit_app.py")


def unsplash_result(api: StubApi, name: str, photo_id: str, score: float) -> dict:
    return {"id": photo_id, "score": score, "url": api.image_url(name), "photographer": "Jane Doe",
            "photographer_url": "https://unsplash.com/@jane", "page_url": f"https://unsplash.com/photos/{photo_id}",
            "description": "a dog on a beach", "width": 640, "height": 480, "orientation": "landscape"}


@pytest.fixture
def app(monkeypatch):
    """An AppTest factory pointed at `url`, with no API settings leaking in from the environment."""
    for name in ("CLIPSEARCH_API_URL", "CLIPSEARCH_API_KEY", "CLIPSEARCH_RETRY_BUDGET"):
        monkeypatch.delenv(name, raising=False)

    def make(url: str | None = None, **env: str) -> AppTest:
        if url:
            monkeypatch.setenv("CLIPSEARCH_API_URL", url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        at = AppTest.from_file(APP, default_timeout=30)
        at.run()
        assert not at.exception
        return at

    return make


def search_text(at: AppTest, text: str) -> AppTest:
    at.text_input(key="text").input(text)
    at.form_submit_button[0].click()
    at.run()
    assert not at.exception, at.exception
    return at


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def test_page_before_any_search(app):
    at = app("http://127.0.0.1:1/search")
    assert at.title[0].value == "clipsearch"
    assert at.text_input(key="text").placeholder == "two dogs on a beach"
    assert at.radio(key="mode").options == ["Text", "Image upload", "Image URL"]
    assert at.slider(key="k").value == 12 and at.selectbox(key="orientation").value == "any"
    assert "API: http://127.0.0.1:1/search" in captions(at) and not at.error and not at.image


def test_two_gateway_timeouts_then_results(app):
    script = [Reply(504, GATEWAY_TIMEOUT), Reply(504, GATEWAY_TIMEOUT)]
    with StubApi(script, images={"ok.png": png()}) as api:
        api.script.append(Reply(200, ok_body([unsplash_result(api, "ok.png", "p1", 0.91234),
                                              unsplash_result(api, "gone.png", "p2", 0.5)])))
        at = search_text(app(api.search_url), "two dogs")
        assert len(api.searches) == 3
        assert all(s.body["query"] == "two dogs" and s.body["input_type"] == "text" for s in api.searches)
        shown = at.image
        assert len(shown) == 2
        assert shown[0].value == [api.image_url("ok.png")]  # hotlinked, as Unsplash asks
        assert shown[1].value[0].startswith("/mock/media/")  # the placeholder, served by Streamlit
    text = captions(at)
    assert any("answered on attempt 3" in c for c in text)
    assert "Image unavailable: image did not load (HTTP 404)" in text
    assert any(c.startswith("2 results · encode 12 ms · search 0.8 ms · total 15 ms") for c in text)
    assert "**score 0.912**" in [m.value for m in at.markdown]
    assert ("Photo by [Jane Doe](https://unsplash.com/@jane?utm_source=clipsearch&utm_medium=referral) on "
            "[Unsplash](https://unsplash.com/photos/p1?utm_source=clipsearch&utm_medium=referral)") in text
    assert not at.error


def test_the_apis_warning_is_shown_above_the_results(app):
    warning = "this deployment's CLIP model has random weights: set MODEL_PATH"
    with StubApi([Reply(200, {**ok_body([]), "warning": warning}), Reply(200, ok_body([]))]) as api:
        at = search_text(app(api.search_url), "two dogs")
        assert [w.value for w in at.warning] == [warning]
        at = search_text(at, "two cats")  # an answer without one shows none
        assert not at.warning and len(api.searches) == 2


def test_a_cached_query_shows_cached_instead_of_an_encode_time(app):
    cached = {**ok_body([]), "took_ms": {"encode": 0.0, "search": 0.9, "total": 1.3}, "cached": True}
    with StubApi([Reply(200, {**ok_body([]), "cached": False}), Reply(200, cached)], images={"ok.png": png()}) as api:
        result = unsplash_result(api, "ok.png", "p1", 0.9)
        api.script[0].body["results"] = api.script[1].body["results"] = [result]
        at = search_text(app(api.search_url), "two dogs")
        assert any(c.startswith("1 result · encode 12 ms ·") for c in captions(at)), captions(at)
        at = search_text(at, "two dogs")
        assert any(c.startswith("1 result · encode cached · search 0.9 ms") for c in captions(at)), captions(at)


def test_bad_request_is_not_retried_and_shows_the_api_message(app):
    body = {"error": {"code": "invalid_input", "message": "query is longer than 77 tokens: shorten it"}}
    with StubApi([Reply(400, body)]) as api:
        at = search_text(app(api.search_url), "a very long query")
        assert len(api.searches) == 1
    assert len(at.error) == 1
    assert "HTTP 400" in at.error[0].value and "query is longer than 77 tokens: shorten it" in at.error[0].value
    assert not at.image


def test_unavailable_with_retry_after_waits_that_long(app):
    busy = {"error": {"code": "backend_unavailable", "message": "index loading"}}
    with StubApi([Reply(503, busy, {"Retry-After": "1"}), Reply(200, ok_body([]))]) as api:
        at = search_text(app(api.search_url), "cat")
        assert len(api.searches) == 2
    note = next(c for c in captions(at) if "answered on attempt 2" in c)
    assert float(note.rsplit("after ", 1)[1].split(" s")[0]) >= 1.0


def test_retry_budget_spent_says_so(app):
    busy = {"error": {"code": "backend_unavailable", "message": "index loading"}}
    with StubApi([Reply(503, busy, {"Retry-After": "5"})]) as api:
        at = search_text(app(api.search_url, CLIPSEARCH_RETRY_BUDGET="2"), "cat")
        assert len(api.searches) == 1
    assert "still not answering (HTTP 503: index loading)" in at.error[0].value
    assert "asked to wait 5 s" in at.error[0].value


def test_connection_refused_names_the_url(app):
    url = f"http://127.0.0.1:{free_port()}/search"
    at = search_text(app(url), "cat")
    assert len(at.error) == 1
    assert f"unreachable at {url}: connection refused" in at.error[0].value
    assert "CLIPSEARCH_API_URL" in at.error[0].value


def test_empty_results_say_why(app):
    with StubApi([Reply(200, ok_body([])), Reply(200, ok_body([]))]) as api:
        at = search_text(app(api.search_url), "unicorn")
        assert "the index has no photos" in at.info[0].value
        at.selectbox(key="orientation").set_value("portrait")
        at.slider(key="min_score").set_value(0.3)
        at = search_text(at, "unicorn")
        assert api.searches[1].body["filters"] == {"orientation": "portrait"}
        assert api.searches[1].body["min_score"] == pytest.approx(0.3)
    assert "No photo matched orientation = portrait and minimum score 0.30" in at.info[0].value


def test_more_like_this_searches_by_id(app):
    with StubApi([], images={"ok.png": png()}) as api:
        api.script += [Reply(200, ok_body([unsplash_result(api, "ok.png", "p1", 0.9)])),
                       Reply(200, ok_body([unsplash_result(api, "ok.png", "p9", 0.8)]))]
        at = search_text(app(api.search_url), "dog")
        at.slider(key="k").set_value(30)
        at.button(key="more-0").click()
        at.run()
        assert len(api.searches) == 2
        assert api.searches[1].body == {"query": "p1", "input_type": "id", "k": 30}
    assert at.subheader[0].value == "Photos like the photo by Jane Doe"


def test_image_upload_is_sent_as_base64(app):
    photo = make_image(3, size=(96, 64), fmt="PNG")
    with StubApi([Reply(200, ok_body([]))]) as api:
        at = app(api.search_url)
        at.radio(key="mode").set_value("Image upload").run()
        at.file_uploader(key="upload").set_value(("photo.png", photo, "image/png"))
        at.form_submit_button[0].click()
        at.run()
        assert not at.exception
        assert len(api.searches) == 1
        body = api.searches[0].body
    assert body["input_type"] == "image" and base64.b64decode(body["query"]) == photo
    assert at.subheader[0].value == "Photos like your upload"
    assert len(at.image) == 1 and at.image[0].value[0].startswith("/mock/media/")  # the query photo


def test_image_url_mode_checks_the_address_before_sending(app):
    with StubApi([Reply(200, ok_body([]))]) as api:
        at = app(api.search_url)
        at.radio(key="mode").set_value("Image URL").run()
        for bad in ("", "file:///etc/passwd", "javascript:alert(1)", "example.com/a.jpg"):
            at.text_input(key="url").input(bad)
            at.form_submit_button[0].click()
            at.run()
            assert "full http(s) address" in at.warning[0].value
        assert api.searches == []
        at.text_input(key="url").input("https://example.com/a.jpg")
        at.form_submit_button[0].click()
        at.run()
        assert [s.body["input_type"] for s in api.searches] == ["url"]


def test_empty_text_query_asks_for_one(app):
    with StubApi([]) as api:
        at = search_text(app(api.search_url), "   ")
        assert api.searches == []
    assert "Type what you are looking for" in at.warning[0].value


def test_local_files_shown_when_present(app, tmp_path):
    photo = tmp_path / "beach.jpg"
    photo.write_bytes(make_image(5, size=(120, 80)))
    results = [{"id": "h1", "score": 0.7, "path": str(photo), "width": 120, "height": 80},
               {"id": "h2", "score": 0.6, "path": str(tmp_path / "deleted.jpg"), "width": 10, "height": 10}]
    with StubApi([Reply(200, ok_body(results))]) as api:
        at = search_text(app(api.search_url), "beach")
    assert len(at.image) == 2 and all(i.value[0].startswith("/mock/media/") for i in at.image)
    text = captions(at)
    assert "beach\\.jpg" in text and "Image unavailable: file not found on this machine" in text
    assert text.count("Image unavailable: file not found on this machine") == 1


def test_settings_from_streamlit_secrets(app):
    with StubApi([Reply(200, ok_body([]))]) as api:
        at = AppTest.from_file(APP, default_timeout=30)
        at.secrets["CLIPSEARCH_API_URL"] = api.search_url
        at.secrets["CLIPSEARCH_API_KEY"] = "from-secrets"
        at.run()
        search_text(at, "cat")
        assert len(api.searches) == 1 and api.searches[0].headers.get("x-api-key") == "from-secrets"


def test_bad_setting_is_reported_not_a_traceback(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_RETRY_BUDGET", "forever")
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert not at.exception
    assert "CLIPSEARCH_RETRY_BUDGET must be a number" in at.error[0].value
