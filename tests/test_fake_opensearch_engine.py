"""The engine behaviours that the OpenSearch API specification's request/response stories establish,
checked against the fake for the requests clipsearch sends.

Each test follows one story of opensearch-project/opensearch-api-specification (commit fbe9edeb,
folder `tests/`), named in a comment with the chapters it follows. That project's CI runs the
stories against real OpenSearch 2.19.2 and 3.1.0 with the k-NN plugin (its
.github/workflows/test-spec.yml; `tests/plugins/knn` on 3.1.0 only), so what a story asserts is
what those engines answer. The tests here send the same kinds of request with clipsearch's kind of
data (photo ids, descriptions, 4- or 8-dimensional unit vectors) and assert the statuses and the
response fields the story asserts; where a story asserts only a status, so does the test, unless
another source in tests/FAKE_OPENSEARCH.md backs more.

Managed mode runs on both versions. Serverless mode (`service="aoss"`) runs, too, the stories of
the requests clipsearch sends to a collection, all of which name no excluded distribution (the
specification's TESTING_GUIDE.md, "Managing Distributions"; its CI runs them on the two versions
only), written without custom ids or the `refresh` parameter; the endpoints a collection lacks
are checked to answer 404 (tests/FAKE_OPENSEARCH.md, "Serverless mode").
"""

from __future__ import annotations

import json
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest
import requests

from fake_opensearch import FakeOpenSearch

VERSIONS = ("2.19.2", "3.1.0")  # what the specification's CI runs the stories against

PHOTOS: dict[str, dict[str, Any]] = {
    "unsplash-fox-01": {"description": "a red fox curled up in fresh snow", "photographer": "Ana Ruiz",
                        "width": 4000, "orientation": "landscape", "featured": True, "vector": [0.6, 0.8, 0.0, 0.0]},
    "unsplash-harbour-02": {"description": "fishing boats in a harbour at dawn", "photographer": "Zoe Park",
                            "width": 3000, "orientation": "landscape", "featured": False,
                            "vector": [0.0, 0.0, 0.8, 0.6]},
    "unsplash-fern-03": {"description": "a fern frond unrolling", "photographer": "Zoe Park", "width": 2400,
                         "orientation": "portrait", "featured": False, "vector": [0.5, 0.5, 0.5, 0.5]},
}
FOX = "unsplash-fox-01"


# -- helpers -------------------------------------------------------------------------------------
def differences(expected: Any, actual: Any, where: str = "$") -> list[str]:
    """Where `actual` fails to contain `expected`: every key `expected` names must be present with a
    contained value, an array's items compared by position (extra keys and trailing items allowed),
    numbers by value (1 == 1.0). This is how the specification's tester compares a response with a
    story's payload (tools/src/tester/ResponsePayloadEvaluator.ts counts only changed and missing
    values)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: an object expected, got {actual!r}"]
        out = []
        for key, value in expected.items():
            inner = f"{where}.{key}"
            out += [f"{inner} missing"] if key not in actual else differences(value, actual[key], inner)
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) < len(expected):
            return [f"{where}: at least {len(expected)} items expected, got {actual!r}"]
        return [d for n, item in enumerate(expected) for d in differences(item, actual[n], f"{where}[{n}]")]
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (expected, actual))
    same = expected == actual if numbers else (type(expected) is type(actual) and expected == actual)
    return [] if same else [f"{where}: {expected!r} expected, got {actual!r}"]


def _send(fake: FakeOpenSearch, method: str, path: str, data: bytes | None, ctype: str,
          params: dict[str, Any]) -> requests.Response:
    """URL parameters as given, booleans written as true/false."""
    query = urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()})
    return requests.request(method, fake.url + path + (f"?{query}" if query else ""), data=data,
                            headers={"Content-Type": ctype}, timeout=10)


def call(fake: FakeOpenSearch, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
    data = None if body is None else json.dumps(body).encode()
    return _send(fake, method, path, data, "application/json", params)


def bulk(fake: FakeOpenSearch, path: str, lines: list[dict], method: str = "POST", **params: Any) -> requests.Response:
    raw = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return _send(fake, method, path, raw, "application/x-ndjson", params)


def answers(r: requests.Response, status: int, payload: Any = None) -> Any:
    """Assert the status and that the body contains `payload`; the body."""
    assert r.status_code == status, f"{r.status_code} ({status} expected): {r.text[:400]}"
    body = r.json() if r.content else None
    if payload is not None:
        assert differences(payload, body) == [], r.text[:400]
    return body


def load(fake: FakeOpenSearch, index: str, photos: dict[str, dict]) -> None:
    """Index photos in one bulk request, searchable at once: with their ids and `refresh=true` on a
    managed cluster; on Serverless without ids (the collection assigns them, the photo id travels
    in `doc_id`) and with the fake's refresh interval set to 0."""
    if fake.aoss:
        lines = [line for pid, p in photos.items() for line in ({"create": {}}, {"doc_id": pid, **p})]
        answers(bulk(fake, f"/{index}/_bulk", lines), 200, {"errors": False})
    else:
        lines = [line for pid, p in photos.items() for line in ({"create": {"_id": pid}}, {"doc_id": pid, **p})]
        answers(bulk(fake, f"/{index}/_bulk", lines, refresh=True), 200, {"errors": False})


def photo_index(dim: int = 4, engine: str = "faiss", space: str = "l2", **vector: Any) -> dict:
    """A k-NN index in clipsearch's shape: keyword, text, integer and boolean fields and one vector."""
    field = {"type": "knn_vector", "dimension": dim, **vector}
    if not vector:
        field["method"] = {"name": "hnsw", "space_type": space, "engine": engine}
    return {"settings": {"index": {"knn": True}},
            "mappings": {"properties": {"doc_id": {"type": "keyword"}, "description": {"type": "text"},
                                        "photographer": {"type": "keyword"}, "width": {"type": "integer"},
                                        "orientation": {"type": "keyword"}, "featured": {"type": "boolean"},
                                        "vector": field}}}


def sources(body: dict) -> list[dict]:
    return [h.get("_source") for h in body["hits"]["hits"]]


def start(kind: str) -> FakeOpenSearch:
    """A managed cluster of that version, or ("aoss") a Serverless vector collection whose writes are
    searchable at the next search."""
    return FakeOpenSearch(service="aoss", refresh_seconds=0.0) if kind == "aoss" else FakeOpenSearch(version=kind)


@pytest.fixture(params=VERSIONS)
def cluster(request) -> Iterator[FakeOpenSearch]:
    """A managed cluster (the fake's default refresh interval of 1 s per index)."""
    with FakeOpenSearch(version=request.param) as fake:
        yield fake


@pytest.fixture
def serverless() -> Iterator[FakeOpenSearch]:
    with start("aoss") as fake:
        yield fake


@pytest.fixture(params=[*VERSIONS, "aoss"])
def any_fake(request) -> Iterator[FakeOpenSearch]:
    """Both managed versions and a Serverless collection."""
    with start(request.param) as fake:
        yield fake


def test_the_comparison_counts_only_changed_and_missing_values():
    assert differences({"a": 1, "b": [1, {"c": 2}]}, {"a": 1.0, "b": [1, {"c": 2, "d": 3}, 4], "e": 5}) == []
    assert differences({"errors": False}, {"errors": True}) == ["$.errors: False expected, got True"]
    assert differences({"a": {"b": 1}}, {"a": {}}) == ["$.a.b missing"]
    assert differences({"hits": [{"_id": "x"}]}, {"hits": []}) != []
    assert differences({"n": 1}, {"n": True}) != [] and differences({"s": "true"}, {"s": True}) != []


# -- bulk ----------------------------------------------------------------------------------------
# opensearch-api-specification tests/default/_core/bulk.yaml, "Create an index." and "Delete
# document in an index."; tests/default/indices/bulk.yaml, the same chapters on /{index}/_bulk.
@pytest.mark.parametrize("scoped", [False, True], ids=["_bulk", "index/_bulk"])
def test_bulk_creates_its_index_and_a_delete_of_a_missing_document_keeps_errors_false(any_fake, scoped):
    index = "uploads-2025"
    path = f"/{index}/_bulk" if scoped else "/_bulk"
    meta = {} if scoped else {"_index": index}
    photo = {"doc_id": "unsplash-kite-07", "description": "a kite over the dunes", "width": 5184}
    answers(bulk(any_fake, path, [{"create": meta}, photo]), 200)
    assert call(any_fake, "HEAD", f"/{index}").status_code == 200  # created by the write

    r = bulk(any_fake, path, [{"delete": {**meta, "_id": "unsplash-never-written"}}], method="PUT")
    answers(r, 200, {"errors": False, "items": [{"delete": {"_index": index, "_id": "unsplash-never-written",
                                                            "result": "not_found", "status": 404}}]})
    assert "error" not in r.json()["items"][0]["delete"]


# opensearch-api-specification tests/default/_core/bulk.yaml, "Bulk document CRUD.";
# tests/default/indices/bulk.yaml, "Bulk index document CRUD.": create, partial updates (one
# asking for _source), a scripted update, a scripted upsert of a missing document and a delete in
# one request answer 200. Scripts are not modelled (tests/FAKE_OPENSEARCH.md): the fake refuses
# those two items on their own, and the request still answers 200 as in the story.
@pytest.mark.parametrize("scoped", [False, True], ids=["_bulk", "index/_bulk"])
def test_bulk_creates_updates_and_deletes_in_one_request(cluster, scoped):
    index, pid = "photos-crud", "unsplash-owl-11"
    path = f"/{index}/_bulk" if scoped else "/_bulk"
    meta = {"_id": pid} if scoped else {"_index": index, "_id": pid}
    r = bulk(cluster, path, [
        {"create": meta}, {"description": "a barn owl on a fence post", "width": 3600},
        {"update": meta}, {"doc": {"height": 2400}},
        {"update": meta}, {"doc": {"height": 2400}, "_source": True},
        {"update": meta}, {"script": {"source": "ctx._source.height = 2400;"}},
        {"update": {**meta, "_id": "unsplash-missing-12"}},
        {"script": {"source": 'ctx.op = "none";'}, "scripted_upsert": True, "upsert": {"height": 1}},
        {"delete": meta}])
    items = [next(iter(item.values())) for item in answers(r, 200)["items"]]
    modelled = [items[n] for n in (0, 1, 2, 5)]
    assert [(i["_id"], i["status"]) for i in modelled] == [(pid, 201), (pid, 200), (pid, 200), (pid, 200)]
    assert modelled[3]["result"] == "deleted"
    assert call(cluster, "GET", f"/{index}/_doc/{pid}").status_code == 404


# -- documents -----------------------------------------------------------------------------------
# opensearch-api-specification tests/default/indices/doc.yaml: every chapter, in its order.
def test_a_documents_life_by_id(cluster):
    index, pid = "photos-docs", "unsplash-heron-21"
    answers(call(cluster, "POST", f"/{index}/_doc", {"description": "a grey heron", "width": 2000}), 201)
    answers(call(cluster, "POST", f"/{index}/_doc/{pid}", {"description": "a grey heron", "width": 2000}), 201)
    answers(call(cluster, "PUT", f"/{index}/_doc/{pid}", {"description": "a grey heron fishing", "width": 2000}), 200)
    got = answers(call(cluster, "GET", f"/{index}/_doc/{pid}"), 200)
    assert got["_source"]["description"] == "a grey heron fishing"  # GET by id is real time
    answers(call(cluster, "HEAD", f"/{index}/_doc/{pid}"), 200)
    answers(call(cluster, "DELETE", f"/{index}/_doc/{pid}"), 200)
    answers(call(cluster, "GET", f"/{index}/_doc/{pid}"), 404)
    answers(call(cluster, "HEAD", f"/{index}/_doc/{pid}"), 404)
    answers(call(cluster, "DELETE", f"/{index}/_doc/{pid}"), 404)


# -- indexes -------------------------------------------------------------------------------------
# opensearch-api-specification tests/default/indices/index.yaml: every chapter for OpenSearch 2.0
# and later, with the URL parameters the story sends.
def test_an_indexs_life_from_creation_to_deletion(cluster):
    body = {"mappings": {"properties": {"photographer": {"type": "keyword"}, "width": {"type": "integer"}}},
            "settings": {"number_of_shards": 5, "number_of_replicas": 2}}
    answers(call(cluster, "PUT", "/photos-a", body), 200)
    answers(call(cluster, "PUT", "/photos-b"), 200)
    answers(call(cluster, "HEAD", "/photos-a", allow_no_indices=True, expand_wildcards="all", flat_settings=True,
                 include_defaults=True, ignore_unavailable=True, local=True), 200)
    answers(call(cluster, "HEAD", "/photos-never"), 404)
    answers(call(cluster, "HEAD", "/photos-never", cluster_manager_timeout="10s"), 404)
    got = answers(call(cluster, "GET", "/photos-a,photos-b", flat_settings=True), 200)
    assert set(got) == {"photos-a", "photos-b"}
    answers(call(cluster, "DELETE", "/photos-a,photos-b", cluster_manager_timeout="10s"), 200)
    answers(call(cluster, "HEAD", "/photos-a"), 404)
    answers(call(cluster, "DELETE", "/photos-never"), 404)


# -- settings ------------------------------------------------------------------------------------
# opensearch-api-specification tests/default/indices/settings.yaml: a write of `index.blocks.write`
# and the replica count in the {"settings": ...} form, read back (values as strings), read by name,
# and with defaults (`index.store.type` '').
def test_settings_are_written_and_read_back(cluster):
    index = "photos-settings"
    answers(call(cluster, "PUT", f"/{index}"), 200)
    answers(call(cluster, "PUT", f"/{index}/_settings",
                 {"settings": {"index.blocks.write": True, "index": {"number_of_replicas": 4}}}), 200)
    answers(call(cluster, "GET", f"/{index}/_settings", allow_no_indices=True, expand_wildcards="all"), 200,
            {index: {"settings": {"index": {"provided_name": index, "blocks": {"write": "true"},
                                            "number_of_replicas": "4"}}}})
    answers(call(cluster, "GET", f"/{index}/_settings/index.blocks.write"), 200,
            {index: {"settings": {"index": {"blocks": {"write": "true"}}}}})
    answers(call(cluster, "GET", f"/{index}/_settings", include_defaults=True), 200,
            {index: {"defaults": {"index": {"store": {"type": ""}}}}})
    # the form clipsearch sends when it pauses a load's refreshes and replicas
    answers(call(cluster, "PUT", f"/{index}/_settings", {"index": {"refresh_interval": "-1", "number_of_replicas": 0}}),
            200)
    answers(call(cluster, "GET", f"/{index}/_settings"), 200,
            {index: {"settings": {"index": {"refresh_interval": "-1", "number_of_replicas": "0"}}}})


# -- mappings ------------------------------------------------------------------------------------
# opensearch-api-specification tests/default/indices/mapping/mapping.yaml: every chapter (the last,
# `strict_allow_templates`, is for 2.16 and later: both versions here).
def test_mappings_are_read_and_updated(cluster):
    answers(call(cluster, "PUT", "/photos-empty"), 200)
    answers(call(cluster, "PUT", "/photos-mapped", {"mappings": {"properties": {
        "description": {"type": "text"}, "width": {"type": "integer"},
        "uploader_ip": {"type": "ip", "ignore_malformed": True}}}}), 200)
    mapped = {"mappings": {"properties": {"description": {"type": "text"}, "width": {"type": "integer"}}}}
    answers(call(cluster, "GET", "/photos-mapped/_mapping"), 200, {"photos-mapped": mapped})
    answers(call(cluster, "GET", "/photos-mapped,photos-empty/_mapping"), 200,
            {"photos-mapped": mapped, "photos-empty": {"mappings": {}}})
    update = {"allow_no_indices": True, "expand_wildcards": "all", "ignore_unavailable": True, "timeout": "10s",
              "write_index_only": True}
    acknowledged = {"acknowledged": True}
    answers(call(cluster, "PUT", "/photos-mapped/_mapping",
                 {"dynamic": "true", "properties": {"location": {"type": "text"}}}, **update), 200, acknowledged)
    answers(call(cluster, "PUT", "/photos-mapped/_mapping", {"properties": {"location": {"type": "text"}}},
                 cluster_manager_timeout="1s"), 200, acknowledged)
    answers(call(cluster, "PUT", "/photos-mapped/_mapping", {"dynamic": "false"}, **update), 200, acknowledged)
    for method in ("POST", "PUT"):
        answers(call(cluster, method, "/photos-mapped/_mapping", {"dynamic": "strict"}, **update), 200, acknowledged)
    answers(call(cluster, "PUT", "/photos-mapped/_mapping", {"dynamic": "strict_allow_templates"}, **update), 200,
            acknowledged)
    answers(call(cluster, "GET", "/photos-mapped/_mapping"), 200, {"photos-mapped": {"mappings": {
        "dynamic": "strict_allow_templates", "properties": {"location": {"type": "text"}}}}})


# -- refresh -------------------------------------------------------------------------------------
# opensearch-api-specification tests/default/indices/refresh.yaml: GET and POST /{index}/_refresh
# (with the story's parameters) answer 200 with no failed shard. The index is created with
# refreshes off so that "not yet searchable" does not depend on timing.
def test_refresh_makes_writes_searchable(cluster):
    index = "photos-refresh"
    answers(call(cluster, "PUT", f"/{index}", {"settings": {"index": {"refresh_interval": "-1"}}}), 200)
    answers(call(cluster, "POST", f"/{index}/_doc", {"description": "a lighthouse in fog", "width": 3000}), 201)
    answers(call(cluster, "POST", f"/{index}/_search", {"size": 0}), 200, {"hits": {"total": {"value": 0}}})
    answers(call(cluster, "GET", f"/{index}/_refresh"), 200, {"_shards": {"failed": 0}})
    answers(call(cluster, "POST", f"/{index}/_refresh", ignore_unavailable=True, allow_no_indices=False,
                 expand_wildcards="all"), 200, {"_shards": {"failed": 0}})
    answers(call(cluster, "POST", f"/{index}/_search", {"size": 0}), 200, {"hits": {"total": {"value": 1}}})


# -- force merge and stats ---------------------------------------------------------------------
# opensearch-api-specification tests/default/indices/forcemerge.yaml: every chapter (primary_only
# is 2.13+, wait_for_completion 2.7+: both versions here). The story excludes amazon-managed and
# amazon-serverless; clipsearch merges one index of its own on a managed domain.
def test_force_merge_of_all_one_and_several_indexes(cluster):
    answers(call(cluster, "PUT", "/photos-a"), 200)
    answers(call(cluster, "PUT", "/photos-b"), 200)
    answers(call(cluster, "POST", "/_forcemerge", allow_no_indices=True, expand_wildcards="all", flush=True,
                 max_num_segments=1, only_expunge_deletes=True, ignore_unavailable=True), 200, {"_shards": {}})
    answers(call(cluster, "POST", "/_forcemerge", primary_only=True), 200)
    answers(call(cluster, "POST", "/_forcemerge", wait_for_completion=True), 200)
    answers(call(cluster, "POST", "/photos-a/_forcemerge"), 200, {"_shards": {}})
    answers(call(cluster, "POST", "/photos-a,photos-b/_forcemerge"), 200, {"_shards": {}})
    assert cluster.indices["photos-a"].force_merges == 5 and cluster.indices["photos-b"].force_merges == 4


# opensearch-api-specification tests/default/indices/stats.yaml: /{index}/_stats and
# /{index}/_stats/docs with the story's parameters (a new index: no documents). Then the
# segments metric clipsearch polls while a merge runs (the fake's bookkeeping, tests/FAKE_OPENSEARCH.md).
def test_stats_count_documents_and_segments(cluster):
    index = "photos-stats"
    answers(call(cluster, "PUT", f"/{index}"), 200)
    answers(call(cluster, "GET", f"/{index}/_stats", expand_wildcards="all", fields="*", completion_fields="*",
                 fielddata_fields="*", include_segment_file_sizes=True, include_unloaded_segments=True), 200,
            {"_shards": {}, "_all": {}, "indices": {index: {}}})
    answers(call(cluster, "GET", f"/{index}/_stats/docs", expand_wildcards="all", forbid_closed_indices=False,
                 groups="*", level="indices"), 200,
            {"_shards": {"failed": 0}, "_all": {"primaries": {"docs": {"count": 0, "deleted": 0}}},
             "indices": {index: {"total": {"docs": {"count": 0}}}}})
    for pid, photo in PHOTOS.items():  # one refresh each: one segment each
        answers(bulk(cluster, f"/{index}/_bulk", [{"index": {"_id": pid}}, photo], refresh=True), 200)
    answers(call(cluster, "GET", f"/{index}/_stats/docs"), 200,
            {"indices": {index: {"primaries": {"docs": {"count": 3}}}}})
    answers(call(cluster, "GET", f"/{index}/_stats/segments"), 200,
            {"indices": {index: {"primaries": {"segments": {"count": 3}}}}})
    answers(call(cluster, "POST", f"/{index}/_forcemerge", max_num_segments=1), 200)
    answers(call(cluster, "GET", f"/{index}/_stats/segments"), 200,
            {"indices": {index: {"primaries": {"segments": {"count": 1}}}}})


# -- count ---------------------------------------------------------------------------------------
# opensearch-api-specification tests/default/indices/count.yaml: an index created empty, two
# documents through /_bulk?refresh=true, a count of all and one of a term on a dynamically mapped
# number (with every URL parameter the story sends).
def test_count_all_and_by_term(cluster):
    index = "photos-count"
    answers(call(cluster, "PUT", f"/{index}", {}), 200)
    answers(bulk(cluster, "/_bulk", [{"create": {"_index": index, "_id": "unsplash-fox-01"}},
                                     {"description": "a red fox", "width": 4000},
                                     {"create": {"_index": index, "_id": "unsplash-fern-03"}},
                                     {"description": "a fern frond", "width": 2400}], refresh=True), 200)
    answers(call(cluster, "GET", f"/{index}/_count"), 200, {"count": 2})
    answers(call(cluster, "POST", f"/{index}/_count", {"query": {"term": {"width": 2400}}}, allow_no_indices=True,
                 expand_wildcards="closed", ignore_unavailable=True, min_score=0, routing="zone",
                 preference="none", terminate_after=1), 200, {"count": 1})


# opensearch-api-specification tests/default/_core/count.yaml: GET and POST /_count, cluster-wide.
def test_count_across_the_cluster(cluster):
    for method in ("GET", "POST"):
        assert isinstance(answers(call(cluster, method, "/_count"), 200)["count"], int)


# -- search: _source, size, sort, search_after -----------------------------------------------------
# opensearch-api-specification tests/default/_core/search/_source.yaml: `_source` true, false, a list
# of fields, {includes, excludes} as strings, and with a wildcard; each answer has timed_out false,
# an exact total of 1, max_score and _score 1. The list forms of includes/excludes and a single
# field: spec/schemas/_core.search.yaml SourceFilter (_common.yaml Fields: a field or an array).
@pytest.mark.parametrize("source, expected", [
    (True, {"description": "a red fox", "width": 4000, "orientation": "landscape"}),
    (False, None),
    (["description", "width"], {"description": "a red fox", "width": 4000}),
    ({"includes": "description", "excludes": "width"}, {"description": "a red fox"}),
    ({"includes": "*", "excludes": "width"}, {"description": "a red fox", "orientation": "landscape"}),
    ({"includes": ["description", "orientation"], "excludes": ["orientation"]}, {"description": "a red fox"}),
    ({"excludes": ["width", "orientation"]}, {"description": "a red fox"}),
    ("desc*", {"description": "a red fox"}),
], ids=["true", "false", "list", "strings", "wildcard", "lists", "excludes-list", "pattern"])
def test_source_filtering(any_fake, source, expected):
    photo = {"description": "a red fox", "width": 4000, "orientation": "landscape"}
    if any_fake.aoss:
        answers(call(any_fake, "POST", "/photos-source/_doc", photo), 201)
    else:
        answers(call(any_fake, "POST", "/photos-source/_doc", photo, refresh=True), 201)
    body = answers(call(any_fake, "POST", "/photos-source/_search", {"_source": source, "query": {"match_all": {}}}),
                   200, {"timed_out": False, "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 1,
                                                      "hits": [{"_index": "photos-source", "_score": 1}]}})
    assert sources(body) == [expected]


# opensearch-api-specification tests/default/_core/search/size.yaml: size 0 counts without hits
# (max_score null), size 1 returns the one document scored 1. clipsearch counts with a size-0 search.
def test_size_zero_counts_and_size_one_returns_a_hit(any_fake):
    load(any_fake, "photos-size", {FOX: PHOTOS[FOX]})
    answers(call(any_fake, "POST", "/photos-size/_search", {"size": 0}), 200,
            {"timed_out": False, "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": None, "hits": []}})
    body = answers(call(any_fake, "POST", "/photos-size/_search", {"size": 0, "track_total_hits": True,
                                                                   "query": {"match_all": {}}}), 200)
    assert body["hits"]["hits"] == [] and body["hits"]["total"]["value"] == 1
    body = answers(call(any_fake, "POST", "/photos-size/_search", {"size": 1, "query": {"match_all": {}}}), 200,
                   {"timed_out": False, "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 1,
                                                 "hits": [{"_index": "photos-size", "_score": 1}]}})
    assert sources(body) == [{"doc_id": FOX, **PHOTOS[FOX]}]


# opensearch-api-specification tests/default/_core/search/sort_by_field.yaml: an explicit keyword
# and integer mapping, three documents (two sharing the keyword, in insertion order), sorted by the
# URL's `sort` (field, field:desc, two fields) and the body's (names, {order} objects, bare orders).
# Equal keys keep the order the documents were written in.
@pytest.mark.parametrize("url_sort, body_sort, order", [
    ("width", None, ["zoe-1200", "ana-3000", "zoe-6000"]),
    ("photographer:desc", None, ["zoe-1200", "zoe-6000", "ana-3000"]),
    ("photographer:desc,width:desc", None, ["zoe-6000", "zoe-1200", "ana-3000"]),
    (None, ["photographer", "width"], ["ana-3000", "zoe-1200", "zoe-6000"]),
    (None, [{"photographer": {"order": "asc"}}, {"width": {"order": "desc"}}], ["ana-3000", "zoe-6000", "zoe-1200"]),
    (None, [{"photographer": "asc"}, {"width": "desc"}], ["ana-3000", "zoe-6000", "zoe-1200"]),
])
def test_sort_by_fields(cluster, url_sort, body_sort, order):
    mapping = {"mappings": {"properties": {"photographer": {"type": "keyword"}, "width": {"type": "integer"}}}}
    answers(call(cluster, "PUT", "/photos-sorted", mapping), 200)
    photos = {"zoe-1200": {"photographer": "Zoe Park", "width": 1200},
              "zoe-6000": {"photographer": "Zoe Park", "width": 6000},
              "ana-3000": {"photographer": "Ana Ruiz", "width": 3000}}
    lines = [line for photo in photos.values() for line in ({"create": {"_index": "photos-sorted"}}, photo)]
    answers(bulk(cluster, "/_bulk", lines, refresh=True), 200, {"errors": False})
    params = {"sort": url_sort} if url_sort else {}
    body = answers(call(cluster, "GET", "/photos-sorted/_search", {"sort": body_sort} if body_sort else None,
                        **params), 200)
    assert sources(body) == [photos[name] for name in order]


# opensearch-api-specification tests/default/_core/search/search_after.yaml: two documents in an
# index the bulk request creates (width mapped dynamically), sorted ascending; search_after the
# first one's sort value returns the second only.
def test_search_after_a_sort_value(any_fake):
    panorama, icon = {"description": "a wide panorama", "width": 6000}, {"description": "a small icon", "width": 1200}
    lines = [{"create": {}}, panorama, {"create": {}}, icon]
    answers(bulk(any_fake, "/photos-paged/_bulk", lines, **({} if any_fake.aoss else {"refresh": True})), 200)
    query = {"sort": [{"width": "asc"}], "search_after": [1200]}
    body = answers(call(any_fake, "POST", "/photos-paged/_search", query), 200)
    assert sources(body) == [panorama]


# The same two stories as clipsearch lists ids: pages of `size` sorted on the keyword doc_id,
# each after the last sort value of the one before (tests/default/_core/search/sort_by_field.yaml,
# search_after.yaml, size.yaml). Whether Serverless offers search_after is not known
# (docs/opensearch.md); its fake answers as the engine does.
def test_paging_ids_with_search_after(any_fake):
    answers(call(any_fake, "PUT", "/photos-ids", photo_index()), 200)
    load(any_fake, "photos-ids", PHOTOS)
    seen, after = [], None
    while True:
        body = {"size": 2, "_source": False, "sort": [{"doc_id": "asc"}], "query": {"match_all": {}}}
        if after is not None:
            body["search_after"] = after
        hits = answers(call(any_fake, "POST", "/photos-ids/_search", body), 200)["hits"]["hits"]
        assert all("_source" not in h for h in hits)
        seen += [h["sort"][0] for h in hits]
        if len(hits) < 2:
            break
        after = hits[-1]["sort"]
    assert seen == sorted(PHOTOS)


# -- k-NN search -----------------------------------------------------------------------------------
def knn_fake_params() -> list:
    """(fake, engine, space, the score of an exact match): k-NN index/SpaceType.scoreTranslation
    gives l2 1 / (1 + 0), cosinesimil (2 - 0) / 2 and innerproduct 1 + 1 for a unit vector; lucene
    is not offered on Serverless."""
    spaces = (("l2", 1.0), ("cosinesimil", 1.0), ("innerproduct", 2.0))
    kinds = [(v, e) for v in VERSIONS for e in ("faiss", "lucene")] + [("aoss", "faiss")]
    return [pytest.param(v, e, s, x, id=f"{v}-{e}-{s}") for v, e in kinds for s, x in spaces]


# opensearch-api-specification tests/default/_core/search/knn/search/search_k.yaml (k-NN 1.2+): a
# knn query with k 1 for a stored vector finds that document alone, an exact total of 1, with the
# vector in its _source; the story's l2 score of 1 for an exact match, and the other spaces'.
@pytest.mark.parametrize("kind, engine, space, exact", knn_fake_params())
def test_knn_k_finds_the_exact_match(kind, engine, space, exact):
    with start(kind) as fake:
        answers(call(fake, "PUT", "/photos-knn", photo_index(engine=engine, space=space)), 200)
        load(fake, "photos-knn", PHOTOS)
        query = {"query": {"knn": {"vector": {"vector": PHOTOS[FOX]["vector"], "k": 1}}}}
        body = answers(call(fake, "POST", "/photos-knn/_search", query), 200,
                       {"timed_out": False, "hits": {"total": {"value": 1, "relation": "eq"},
                                                     "hits": [{"_index": "photos-knn"}]}})
        assert sources(body) == [{"doc_id": FOX, **PHOTOS[FOX]}]
        assert body["hits"]["hits"][0]["_score"] == pytest.approx(exact, abs=1e-6)
        if space == "l2":
            assert body["hits"]["hits"][0]["_score"] == 1  # the story's exact value


# opensearch-api-specification tests/default/_core/search/knn/search/search_filter.yaml (2.9+): a
# filter no document matches gives an exact total of 0 and no hits. The filters that do match, in
# the form clipsearch sends (a bool of term clauses inside the knn query), keep only their documents.
@pytest.mark.parametrize("kind", [*VERSIONS, "aoss"])
def test_knn_filter_keeps_only_matching_documents(kind):
    with start(kind) as fake:
        answers(call(fake, "PUT", "/photos-filtered", photo_index(space="innerproduct")), 200)
        load(fake, "photos-filtered", PHOTOS)

        def knn(flt: dict) -> dict:
            q = {"knn": {"vector": {"vector": PHOTOS[FOX]["vector"], "k": 3, "filter": flt}}}
            return answers(call(fake, "POST", "/photos-filtered/_search",
                                {"size": 3, "query": q, "_source": {"excludes": ["vector"]}}), 200)

        body = knn({"term": {"width": 4001}})
        assert differences({"timed_out": False, "hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}},
                           body) == [] and body["hits"]["hits"] == []
        by_orientation = knn({"bool": {"filter": [{"term": {"orientation": "portrait"}}]}})
        assert [s["doc_id"] for s in sources(by_orientation)] == ["unsplash-fern-03"]
        by_two = knn({"bool": {"filter": [{"term": {"photographer": "Zoe Park"}}, {"term": {"featured": False}}]}})
        assert sorted(s["doc_id"] for s in sources(by_two)) == ["unsplash-fern-03", "unsplash-harbour-02"]
        assert all("vector" not in s for s in sources(by_two))


# opensearch-api-specification tests/default/_core/search/knn/search/search_min_score.yaml (2.14+):
# a knn query with min_score instead of k returns what scores at least that: the exact match
# (scored 1 in l2), not the others (squared l2 distances 0.6 and 2, so 1 / (1 + d): 0.625 and 1/3,
# k-NN index/SpaceType.scoreTranslation).
@pytest.mark.parametrize("kind", [*VERSIONS, "aoss"])
def test_knn_min_score_instead_of_k(kind):
    with start(kind) as fake:
        answers(call(fake, "PUT", "/photos-min", photo_index(space="l2")), 200)
        load(fake, "photos-min", PHOTOS)
        query = {"query": {"knn": {"vector": {"vector": PHOTOS[FOX]["vector"], "min_score": 0.9}}}}
        body = answers(call(fake, "POST", "/photos-min/_search", query), 200,
                       {"timed_out": False, "hits": {"total": {"value": 1, "relation": "eq"},
                                                     "hits": [{"_index": "photos-min", "_score": 1}]}})
        assert sources(body) == [{"doc_id": FOX, **PHOTOS[FOX]}]
        query["query"]["knn"]["vector"]["min_score"] = 0.6
        body = answers(call(fake, "POST", "/photos-min/_search", query), 200)
        assert [s["doc_id"] for s in sources(body)] == [FOX, "unsplash-fern-03"]


# opensearch-api-specification tests/default/_core/search/knn/on_disk.yaml (2.17+): an 8-dimensional
# float field with a top-level l2 space type, mode on_disk and compression 16x, documents indexed
# by id through /_bulk, and a knn query with k, method_parameters.ef_search and
# rescore.oversample_factor: 200 (the story asserts nothing else).
def test_knn_on_disk_with_rescoring(cluster):
    mapping = photo_index(dim=8, space_type="l2", data_type="float", mode="on_disk", compression_level="16x")
    answers(call(cluster, "PUT", "/photos-disk", mapping), 200)
    lines = []
    for n in range(8):
        unit = [0.0] * 8
        unit[n] = 1.0
        lines += [{"index": {"_index": "photos-disk", "_id": f"unsplash-{n:02d}"}},
                  {"vector": unit, "aspect_ratio": 1.5 + n / 10}]
    answers(bulk(cluster, "/_bulk", lines), 200, {"errors": False})
    query = {"knn": {"vector": {"vector": [0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0], "k": 5,
                                "method_parameters": {"ef_search": 512}, "rescore": {"oversample_factor": 10}}}}
    body = answers(call(cluster, "POST", "/photos-disk/_search", {"query": query}), 200)
    assert len(body["hits"]["hits"]) <= 5


# opensearch-api-specification tests/plugins/knn/knn/warmup.yaml (run on 3.1.0): warming up a k-NN
# index answers 200. An index without index.knn is refused (k-NN plugin/rest/RestKNNWarmupHandler).
def test_warmup(cluster):
    answers(call(cluster, "PUT", "/photos-warm", photo_index(dim=8, space_type="l2")), 200)
    answers(call(cluster, "GET", "/_plugins/_knn/warmup/photos-warm"), 200)
    assert cluster.indices["photos-warm"].warmups == 1
    answers(call(cluster, "PUT", "/photos-plain"), 200)
    answers(call(cluster, "GET", "/_plugins/_knn/warmup/photos-plain"), 400)


# -- aliases -------------------------------------------------------------------------------------
GENERATION = "photos-clip-vit-b-32-512-20250101120000000"
NEXT = "photos-clip-vit-b-32-512-20250301120000000"


# opensearch-api-specification tests/default/indices/alias/alias.yaml: every chapter of
# /{index}/_alias[/{name}] (the last, is_hidden, is for 2.16 and later: both versions here), and
# its epilogue: deleting the index.
def test_index_scoped_alias_endpoints(cluster):
    answers(call(cluster, "PUT", f"/{GENERATION}"), 200)
    listed = {GENERATION: {"aliases": {"photos": {}}}}
    answers(call(cluster, "POST", f"/{GENERATION}/_alias/photos"), 200)
    answers(call(cluster, "PUT", f"/{GENERATION}/_alias/photos"), 200)
    answers(call(cluster, "GET", f"/{GENERATION}/_alias"), 200, listed)
    answers(call(cluster, "GET", f"/{GENERATION}/_alias/photos"), 200, listed)
    answers(call(cluster, "DELETE", f"/{GENERATION}/_alias/photos"), 200)
    answers(call(cluster, "HEAD", f"/{GENERATION}/_alias/photos"), 404)
    answers(call(cluster, "PUT", f"/{GENERATION}/_alias/photos"), 200)
    answers(call(cluster, "PUT", f"/{GENERATION}/_alias", {"alias": "photos", "is_write_index": False}), 200)
    answers(call(cluster, "HEAD", f"/{GENERATION}/_alias/photos"), 200)
    answers(call(cluster, "HEAD", f"/{GENERATION}/_alias/photos-none"), 404)
    answers(call(cluster, "PUT", f"/{GENERATION}/_alias/photos",
                 {"index_routing": "r1", "search_routing": "r2", "routing": "r", "is_write_index": True,
                  "filter": {"match_all": {}}}), 200)
    answers(call(cluster, "PUT", f"/{GENERATION}/_alias/photos", {"is_hidden": True}), 200)
    assert cluster.aliases == {"photos": {GENERATION}}
    answers(call(cluster, "DELETE", f"/{GENERATION}"), 200)  # the story's epilogue: its aliases go with it
    answers(call(cluster, "GET", "/_alias/photos"), 404)
    answers(call(cluster, "HEAD", "/photos"), 404)
    assert cluster.aliases == {}


# opensearch-api-specification tests/default/indices/aliases/aliases.yaml: the same through
# /{index}/_aliases[/{name}]: created, updated with is_write_index (the alias named in the path, then
# in the body) and deleted.
def test_index_scoped_aliases_endpoints(cluster):
    answers(call(cluster, "PUT", f"/{GENERATION}"), 200)
    answers(call(cluster, "POST", f"/{GENERATION}/_aliases/photos"), 200)
    answers(call(cluster, "PUT", f"/{GENERATION}/_aliases/photos", {"is_write_index": True}), 200)
    answers(call(cluster, "PUT", f"/{GENERATION}/_aliases", {"alias": "photos", "is_write_index": False}), 200)
    assert cluster.aliases == {"photos": {GENERATION}}
    answers(call(cluster, "DELETE", f"/{GENERATION}/_aliases/photos"), 200)
    assert cluster.aliases == {}


# opensearch-api-specification tests/default/_core/aliases.yaml: POST /_aliases removes one alias
# and adds two in one request; /_aliases/{name} with the index in the body (POST and PUT); its
# epilogue deletes every alias of the index with a wildcard. Serverless: only POST /_aliases.
def test_aliases_updated_in_one_request(cluster):
    answers(call(cluster, "PUT", f"/{GENERATION}"), 200)
    answers(call(cluster, "PUT", f"/{GENERATION}/_aliases/photos"), 200)
    actions = [{"remove": {"index": GENERATION, "alias": "photos"}},
               {"add": {"index": GENERATION, "alias": "photos-a"}}, {"add": {"index": GENERATION, "alias": "photos-b"}}]
    answers(call(cluster, "POST", "/_aliases", {"actions": actions}), 200, {"acknowledged": True})
    answers(call(cluster, "POST", "/_aliases/photos-c", {"index": GENERATION}), 200, {"acknowledged": True})
    answers(call(cluster, "PUT", "/_aliases/photos-d", {"index": GENERATION}), 200, {"acknowledged": True})
    assert set(cluster.aliases) == {"photos-a", "photos-b", "photos-c", "photos-d"}
    answers(call(cluster, "DELETE", f"/{GENERATION}/_alias/*"), 200)
    answers(call(cluster, "GET", f"/{GENERATION}/_alias"), 200, {GENERATION: {"aliases": {}}})
    assert cluster.aliases == {}


def test_serverless_moves_an_alias_with_one_aliases_request(serverless):
    for name in (GENERATION, NEXT):
        answers(call(serverless, "PUT", f"/{name}", photo_index()), 200)
    answers(call(serverless, "POST", "/_aliases", {"actions": [{"add": {"index": GENERATION, "alias": "photos"}}]}),
            200, {"acknowledged": True})
    swap = [{"remove": {"index": GENERATION, "alias": "photos"}}, {"add": {"index": NEXT, "alias": "photos"}}]
    answers(call(serverless, "POST", "/_aliases", {"actions": swap}), 200, {"acknowledged": True})
    assert serverless.aliases == {"photos": {NEXT}}
    answers(call(serverless, "PUT", f"/{NEXT}/_alias/photos-next"), 404)
    answers(call(serverless, "PUT", "/_aliases/photos-next", {"index": NEXT}), 404)


# opensearch-api-specification tests/default/_core/alias.yaml: /_alias/{name} with the index in the
# body (PUT and POST), /_alias with both in the body, GET and HEAD of all, of one and of a missing
# alias; its epilogue deletes the index's aliases by a pattern.
def test_alias_endpoints_without_an_index_in_the_path(cluster):
    answers(call(cluster, "PUT", f"/{GENERATION}"), 200)
    acknowledged = {"acknowledged": True}
    answers(call(cluster, "PUT", "/_alias/photos-1", {"index": GENERATION}), 200, acknowledged)
    answers(call(cluster, "POST", "/_alias/photos-2", {"index": GENERATION}), 200, acknowledged)
    answers(call(cluster, "PUT", "/_alias", {"index": GENERATION, "alias": "photos-3"}), 200, acknowledged)
    answers(call(cluster, "GET", "/_alias"), 200,
            {GENERATION: {"aliases": {"photos-1": {}, "photos-2": {}, "photos-3": {}}}})
    answers(call(cluster, "GET", "/_alias/photos-1"), 200, {GENERATION: {"aliases": {"photos-1": {}}}})
    answers(call(cluster, "GET", "/_alias/photos-none"), 404)
    answers(call(cluster, "HEAD", "/_alias/photos-1"), 200)
    answers(call(cluster, "HEAD", "/_alias/photos-none"), 404)
    answers(call(cluster, "DELETE", f"/{GENERATION}/_alias/photos-*"), 200)
    assert cluster.aliases == {}


# -- what a Serverless collection does not offer --------------------------------------------------
# The managed answers above come from the stories named there; on Serverless these answer 404
# (sources in tests/FAKE_OPENSEARCH.md, "Serverless mode"), and a write may not ask for a refresh.
@pytest.mark.parametrize("method, path, body", [
    ("POST", "/photos-x/_refresh", None),  # indices/refresh.yaml
    ("POST", "/photos-x/_forcemerge", None),  # indices/forcemerge.yaml
    ("GET", "/photos-x/_stats", None),  # indices/stats.yaml
    ("GET", "/photos-x/_stats/segments", None),
    ("PUT", "/photos-x/_settings", {"index": {"refresh_interval": "-1"}}),  # indices/settings.yaml
    ("GET", "/_plugins/_knn/warmup/photos-x", None),  # plugins/knn/knn/warmup.yaml
    ("GET", "/", None),
])
def test_serverless_lacks_these_endpoints(serverless, method, path, body):
    answers(call(serverless, "PUT", "/photos-x", photo_index()), 200)
    answers(call(serverless, method, path, body), 404)


def test_serverless_refuses_the_refresh_parameter_and_custom_ids(serverless):
    answers(call(serverless, "PUT", "/photos-x", photo_index()), 200)
    r = bulk(serverless, "/photos-x/_bulk", [{"create": {}}, {"doc_id": FOX, **PHOTOS[FOX]}], refresh=True)
    answers(r, 400)
    r = bulk(serverless, "/photos-x/_bulk", [{"create": {"_id": FOX}}, {"doc_id": FOX, **PHOTOS[FOX]}])
    items = answers(r, 200, {"errors": True})["items"]
    assert items[0]["create"]["status"] == 400
