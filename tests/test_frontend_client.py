"""The front-end's API client: retry policy with an injected clock and sleep, over real HTTP
against the stub in stub_http.py (every request counted)."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from frontend.client import (ApiError, RetryBudget, SearchClient, SearchRequest, ApiUnavailable,
                             Unreachable, parse_retry_after)
from stub_http import GATEWAY_TIMEOUT, Reply, StubApi, free_port, ok_body

RESULT = {"id": "abc", "score": 0.91, "url": "https://images.unsplash.com/photo-1", "width": 640, "height": 480}


class FakeClock:
    """Time that moves only when the client sleeps (plus a fixed cost per request, if set)."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client_for(url: str, clock: FakeClock, **policy) -> SearchClient:
    return SearchClient(url, policy=RetryBudget(**policy), clock=clock, sleep=clock.sleep, rng=random.Random(1))


def test_gateway_timeouts_then_success_retries_exactly_twice():
    clock, waits = FakeClock(), []
    with StubApi([Reply(504, GATEWAY_TIMEOUT), Reply(504, GATEWAY_TIMEOUT), Reply(200, ok_body([RESULT]))]) as api:
        resp = client_for(api.search_url, clock).search(SearchRequest("two dogs", k=5),
                                                        on_wait=lambda *a: waits.append(a))
        assert len(api.searches) == 3
        assert api.searches[0].body == {"query": "two dogs", "input_type": "text", "k": 5}
    assert resp.attempts == 3 and [r["id"] for r in resp.results] == ["abc"]
    assert resp.took_ms["total"] == 15.1 and resp.model == "clipsearch/tiny-test"
    assert resp.cached is False  # an answer without the field (an older API) is not cached
    assert [w[0] for w in waits] == [2, 3] and all(w[2] == "HTTP 504" for w in waits)
    # full jitter: each wait within [0, base * 2**(n-1)]
    assert 0 <= clock.sleeps[0] <= 1.0 and 0 <= clock.sleeps[1] <= 2.0


@pytest.mark.parametrize("status", [400, 404, 413, 401, 500, 502])
def test_errors_that_retrying_cannot_fix_are_not_retried(status):
    clock = FakeClock()
    body = {"error": {"code": "invalid_input", "message": "k must be between 1 and 100"}}
    with StubApi([Reply(status, body)]) as api:
        with pytest.raises(ApiError) as info:
            client_for(api.search_url, clock).search(SearchRequest("x"))
        assert len(api.searches) == 1
    assert info.value.status == status and info.value.error_code == "invalid_input"
    assert "k must be between 1 and 100" in str(info.value) and clock.sleeps == []
    assert ("CLIPSEARCH_API_KEY" in str(info.value)) == (status == 401)


def test_retry_after_is_honoured():
    clock = FakeClock()
    busy = {"error": {"code": "backend_unavailable", "message": "index loading"}}
    with StubApi([Reply(503, busy, {"Retry-After": "7"}), Reply(429, {"message": "Too Many Requests"}),
                  Reply(200, ok_body([]))]) as api:
        resp = client_for(api.search_url, clock).search(SearchRequest("x"))
        assert len(api.searches) == 3
    assert clock.sleeps[0] == 7.0 and clock.sleeps[1] <= 2.0 and resp.results == []


def test_budget_stops_retrying_and_says_why():
    clock = FakeClock()
    with StubApi([Reply(504, GATEWAY_TIMEOUT)] * 50) as api:
        with pytest.raises(ApiUnavailable) as info:
            client_for(api.search_url, clock, budget_s=20.0, base_delay_s=4.0, max_delay_s=8.0).search(SearchRequest("x"))
        attempts = len(api.searches)
    assert info.value.attempts == attempts == len(clock.sleeps) + 1 and attempts >= 2
    assert sum(clock.sleeps) < 20.0 and info.value.status == 504
    assert "Endpoint request timed out" in str(info.value) and "20 s retry budget" in str(info.value)


def test_retry_after_beyond_budget_gives_up_at_once():
    clock = FakeClock()
    with StubApi([Reply(503, {"error": {"code": "backend_unavailable", "message": "down"}}, {"Retry-After": "120"})]) as api:
        with pytest.raises(ApiUnavailable, match="asked to wait 120 s"):
            client_for(api.search_url, clock).search(SearchRequest("x"))
        assert len(api.searches) == 1 and clock.sleeps == []


def test_connection_refused_one_quick_retry_then_unreachable_names_the_url():
    clock, waits = FakeClock(), []
    url = f"http://127.0.0.1:{free_port()}/search"
    with pytest.raises(Unreachable) as info:
        client_for(url, clock).search(SearchRequest("x"), on_wait=lambda *a: waits.append(a))
    assert clock.sleeps == [0.5] and waits == [(2, 0.5, "connection failed")]
    assert url in str(info.value) and "connection refused" in str(info.value)


def test_read_timeout_is_unreachable_not_retried():
    clock = FakeClock()
    with StubApi([Reply(200, ok_body([]), delay_s=1.0)]) as api:
        with pytest.raises(Unreachable, match="no answer within"):
            client_for(api.search_url, clock, read_timeout_s=0.2).search(SearchRequest("x"))
        assert len(api.searches) == 1 and clock.sleeps == []


@pytest.mark.parametrize("url", ["localhost:8000/search", "ftp://example.com/search", "http://"])
def test_bad_api_url_is_reported(url):
    with pytest.raises(Unreachable, match="not a valid http"):
        client_for(url, FakeClock()).search(SearchRequest("x"))


@pytest.mark.parametrize("body", ["<html>oops</html>", {"results": "many"}, [1, 2]])
def test_200_without_results_is_an_error(body):
    with StubApi([Reply(200, body)]) as api:
        with pytest.raises(ApiError, match="not a search result"):
            client_for(api.search_url, FakeClock()).search(SearchRequest("x"))


def test_api_key_header_and_full_request_body():
    with StubApi([Reply(200, ok_body([RESULT, {"no": "id"}]))]) as api:
        client = SearchClient(api.search_url, "sekret")
        resp = client.search(SearchRequest("abc", "id", k=3, filters={"orientation": "portrait"}, min_score=0.25))
        seen = api.searches[0]
    assert seen.headers.get("x-api-key") == "sekret"
    assert seen.body == {"query": "abc", "input_type": "id", "k": 3, "filters": {"orientation": "portrait"},
                         "min_score": 0.25}
    assert [r["id"] for r in resp.results] == ["abc"]  # malformed result dropped


def test_non_json_error_body_is_shown_as_text():
    with StubApi([Reply(400, "bad   request\nbody")]) as api:
        with pytest.raises(ApiError, match="bad request body"):
            client_for(api.search_url, FakeClock()).search(SearchRequest("x"))


def test_an_html_page_is_named_as_another_program_not_echoed():
    """What `make demo` showed when another server held the gateway's port: "HTTP 501 <!DOCTYPE HTML>"."""
    page = "<!DOCTYPE HTML>\n<html><head><title>Error response</title></head><body>501</body></html>"
    with StubApi([Reply(501, page, headers={"Content-Type": "text/html;charset=utf-8"})]) as api:
        with pytest.raises(ApiError) as err:
            client_for(api.search_url, FakeClock()).search(SearchRequest("x"))
    assert "<!DOCTYPE" not in str(err.value) and "another program" in str(err.value), str(err.value)
    assert api.search_url in str(err.value)


def test_parse_retry_after():
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("") is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_backoff_is_full_jitter_capped():
    policy, rng = RetryBudget(base_delay_s=1.0, max_delay_s=10.0), random.Random(3)
    for retry in range(1, 12):
        cap = min(10.0, 2 ** (retry - 1))
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap * 0.8


def test_front_end_settings():
    from frontend.config import DEFAULT_API_URL, FrontendSettings

    s = FrontendSettings.from_env({})
    assert s.api_url == DEFAULT_API_URL == "http://localhost:8000/search" and s.api_key is None
    assert s.retry_budget_s == 90.0
    s = FrontendSettings.from_env({"CLIPSEARCH_API_URL": " https://x.test/prod/search ", "CLIPSEARCH_API_KEY": "k3y",
                                   "CLIPSEARCH_RETRY_BUDGET": "12.5"})
    assert (s.api_url, s.api_key, s.retry_budget_s) == ("https://x.test/prod/search", "k3y", 12.5)
    assert "k3y" not in repr(s)
    with pytest.raises(ValueError, match="CLIPSEARCH_RETRY_BUDGET"):
        FrontendSettings.from_env({"CLIPSEARCH_RETRY_BUDGET": "long"})


@pytest.mark.parametrize("status, words", [(400, "refused the request (HTTP 400)"), (500, "failed (HTTP 500)"),
                                           (200, "cannot read (HTTP 200)")])
def test_api_error_wording(status, words):
    assert words in str(ApiError(status, "detail")) and str(ApiError(status, "detail")).endswith("detail")


@pytest.mark.parametrize("value, cached", [(True, True), (False, False), ("yes", False), (1, False)])
def test_the_apis_cached_flag_is_read_strictly(value, cached):
    with StubApi([Reply(200, {**ok_body([RESULT]), "cached": value})]) as api:
        assert client_for(api.search_url, FakeClock()).search(SearchRequest("two dogs")).cached is cached
