"""The front-end's pure parts: card text, attribution links, query building, thumbnails."""

from __future__ import annotations

import base64
import io
import os
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image

from conftest import make_image
from frontend import render
from frontend.client import SearchRequest
from frontend.query import MAX_SEND_BYTES, BadQuery, encode_upload, filters_for, image_request, text_request, url_request
from frontend.thumbs import display_url, placeholder, thumb_for, thumbs_for
from stub_http import StubApi, png


def test_attribution_follows_unsplash_wording_with_referral_links():
    md = render.attribution({"photographer": "Ana [Lee]", "photographer_url": "https://unsplash.com/@ana?x=1",
                             "page_url": "https://unsplash.com/photos/q1"})
    assert md == ("Photo by [Ana \\[Lee\\]](https://unsplash.com/@ana?x=1&utm_source=clipsearch&utm_medium=referral)"
                  " on [Unsplash](https://unsplash.com/photos/q1?utm_source=clipsearch&utm_medium=referral)")


@pytest.mark.parametrize("result, expected", [
    ({"photographer": "Bo", "photographer_url": "javascript:alert(1)"}, "Photo by Bo on Unsplash"),
    ({"page_url": "https://unsplash.com/photos/z"},
     "[View on Unsplash](https://unsplash.com/photos/z?utm_source=clipsearch&utm_medium=referral)"),
    ({"path": "/photos/sub/my_cat.jpg"}, "my\\_cat\\.jpg"),
    ({"url": "https://x.test/a.jpg"}, None),
])
def test_attribution_degrades_safely(result, expected):
    assert render.attribution(result) == expected


def test_utm_is_not_duplicated():
    url = render.with_utm("https://unsplash.com/@a?utm_source=other")
    assert parse_qs(urlsplit(url).query) == {"utm_source": ["other"], "utm_medium": ["referral"]}


def test_link_targets_cannot_break_out_of_markdown():
    md = render.attribution({"photographer": "x", "photographer_url": "https://u.test/a (b)"})
    assert "(https://u.test/a%20%28b%29?utm_source" in md


@pytest.mark.parametrize("took, line", [
    ({"encode": 27.64, "search": 2.5, "total": 31.2}, "encode 28 ms · search 2.5 ms · total 31 ms"),
    ({"total": 5}, "total 5.0 ms"),
    ({}, None),
    ({"encode": "fast", "search": True}, None),
])
def test_timing_line(took, line):
    assert render.timing_line(took) == line


def test_score_and_messages():
    assert render.score_text(0.87654) == "score 0.877" and render.score_text(None) == "score ?"
    assert render.warming_message(3) == "The search service is warming up (attempt 3)…"
    assert render.retried_note(1, 0.2) is None and "attempt 2, after 31.0 s" in render.retried_note(2, 31.0)


def test_empty_reason_names_the_limits_or_the_empty_index():
    assert "index has no photos" in render.empty_reason(SearchRequest("x"))
    limited = SearchRequest("x", filters={"orientation": "squarish"}, min_score=0.25)
    assert render.empty_reason(limited).startswith("No photo matched orientation = squarish and minimum score 0.25")


def test_describe_escapes_user_text():
    assert render.describe(SearchRequest("*bold* [x](y)")) == "Photos matching “\\*bold\\* \\[x\\]\\(y\\)”"
    assert render.describe(SearchRequest("ab`c", "id")) == "Photos like `abc`"
    assert render.describe(SearchRequest("h1", "id"), "my_cat.jpg") == "Photos like my\\_cat\\.jpg"
    assert render.photo_label({"id": "a", "photographer": "Ana"}) == "the photo by Ana"
    assert render.photo_label({"id": "a", "path": "/p/x.png"}) == "x.png" and render.photo_label({"id": "a"}) == "a"


def test_rows_of_four():
    assert [list(r) for r in render.rows(list(range(10)), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ----------------------------------------------------------------------------- queries
def test_query_builders():
    assert text_request("  dogs ", k=3) == SearchRequest("dogs", "text", k=3)
    assert url_request("https://a.test/x.jpg").input_type == "url"
    assert filters_for("portrait") == {"orientation": "portrait"} and filters_for(None) == {}
    with pytest.raises(BadQuery):
        filters_for("diagonal")
    for bad in ("", "  ", None):
        with pytest.raises(BadQuery):
            text_request(bad)
    with pytest.raises(BadQuery):
        image_request(b"")


def test_large_upload_is_reencoded_to_fit_a_lambda_request():
    # Incompressible noise, so the PNG really is over the limit.
    import numpy as np

    noise = (np.random.default_rng(0).random((1400, 1400, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert len(buf.getvalue()) > MAX_SEND_BYTES
    sent = base64.b64decode(encode_upload(buf.getvalue()))
    assert len(sent) < MAX_SEND_BYTES and max(Image.open(io.BytesIO(sent)).size) == 1024
    small = make_image(1)
    assert base64.b64decode(encode_upload(small)) == small  # small uploads go byte for byte


def test_large_non_image_upload_is_refused():
    with pytest.raises(BadQuery, match="cannot be used"):
        encode_upload(b"\0" * (MAX_SEND_BYTES + 1))


# ----------------------------------------------------------------------------- thumbnails
def test_unsplash_urls_ask_the_cdn_for_a_card_sized_image():
    url = display_url("https://images.unsplash.com/photo-123?ixid=abc")
    q = parse_qs(urlsplit(url).query)
    assert q["w"] == ["600"] and q["ixid"] == ["abc"]
    assert display_url("https://images.unsplash.com/photo-1?w=200") == "https://images.unsplash.com/photo-1?w=200"
    assert display_url("https://example.com/a.jpg") == "https://example.com/a.jpg"


def test_thumbs_check_each_url_over_http(tmp_path):
    local = tmp_path / "a.jpg"
    local.write_bytes(make_image(2, size=(1200, 900)))
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with StubApi(images={"ok.png": png(), "page.png": b"<html>login</html>"}) as api:
        results = [{"id": "1", "url": api.image_url("ok.png")}, {"id": "2", "url": api.image_url("missing.png")},
                   {"id": "3", "url": api.image_url("page.png")}, {"id": "4", "path": str(local)},
                   {"id": "5", "path": str(tmp_path / "nope.jpg")}, {"id": "6", "path": str(tmp_path / "junk.jpg")},
                   {"id": "7", "url": "file:///etc/passwd"}, {"id": "8"}]
        thumbs = thumbs_for(results, requests.Session())
        assert {s.method for s in api.seen} == {"HEAD"} and len(api.seen) == 3
    assert thumbs[0].url == api.image_url("ok.png") and thumbs[0].ok
    assert thumbs[1].problem == "image did not load (HTTP 404)"
    assert thumbs[2].problem == "the link is not an image (text/html)"
    assert thumbs[3].image is not None and max(thumbs[3].image.size) == 600
    assert thumbs[4].problem == "file not found on this machine"
    assert thumbs[5].problem.startswith("cannot show this file")
    assert thumbs[6].problem == thumbs[7].problem == "the result has no image URL or file"


def test_unreachable_image_host_gives_a_placeholder():
    from stub_http import free_port

    thumb = thumb_for({"id": "x", "url": f"http://127.0.0.1:{free_port()}/a.png"}, requests.Session())
    assert thumb.problem == "image did not load (ConnectionError)"


def test_placeholder_is_a_card_sized_image():
    img = placeholder()
    assert img.size == (400, 300) and img.mode == "RGB"


def test_relative_paths_are_looked_up_under_the_photo_dirs_and_never_above(tmp_path, monkeypatch):
    from frontend.thumbs import local_file

    photos, other = tmp_path / "photos", tmp_path / "other"
    (photos / "sub").mkdir(parents=True)
    other.mkdir()
    (photos / "sub" / "a.jpg").write_bytes(make_image(1))
    (tmp_path / "secret.jpg").write_bytes(make_image(2))
    os.symlink(tmp_path / "secret.jpg", photos / "out.jpg")
    dirs = [str(other), str(photos)]
    assert local_file("sub/a.jpg", dirs) == str(photos / "sub" / "a.jpg")
    for escape in ("../secret.jpg", "sub/../../secret.jpg", "out.jpg", "nope.jpg"):
        assert local_file(escape, dirs) is None, escape
    assert local_file(str(tmp_path / "secret.jpg"), dirs) == str(tmp_path / "secret.jpg")  # an older index's
    monkeypatch.setenv("CLIPSEARCH_PHOTO_DIRS", os.pathsep.join(dirs))
    assert local_file("sub/a.jpg") == str(photos / "sub" / "a.jpg")
    assert thumb_for({"id": "1", "path": "sub/a.jpg"}, requests.Session()).image is not None
