"""The fake OpenSearch is strict: it refuses what a real 3.x cluster refuses, in OpenSearch's shapes."""

from __future__ import annotations

import json

import pytest
import requests

from clipsearch.config import OpenSearchSettings
from clipsearch.index import opensearch_mapping as om

DIM = 4


def call(fake, method, path, body=None, raw: bytes | None = None, ctype="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return requests.request(method, fake.url + path, data=data, headers={"Content-Type": ctype}, timeout=5)


def knn_index(fake, name="i", **over):
    body = om.index_body(OpenSearchSettings(replicas=0, **over), model_id="m", dim=DIM)
    r = call(fake, "PUT", f"/{name}", body)
    assert r.status_code == 200, r.text
    return body


def error_of(r):
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == r.status_code
    assert body["error"]["root_cause"][0]["type"] == body["error"]["type"]
    return body["error"]["type"], body["error"]["reason"]


@pytest.mark.parametrize("settings, reason", [
    ({"index": {"knn": True, "knn.space_type": "innerproduct"}}, "index.knn.space_type"),
    ({"index.knn.algo_param.m": 16}, "index.knn.algo_param.m"),
    ({"index": {"knn": True, "knn.algo_param.ef_construction": 100}}, "ef_construction"),
    ({"index": {"no_such_setting": 1}}, "unknown setting"),
    ({"index": {"knn": "yes"}}, "true] or [false"),
    ({"index": {"number_of_replicas": -1}}, ">= 0"),
])
def test_refuses_removed_and_unknown_settings(fake_opensearch, settings, reason):
    r = call(fake_opensearch, "PUT", "/x", {"settings": settings})
    assert r.status_code == 400 and reason in error_of(r)[1]


def _vector_mapping(**over):
    v = {"type": "knn_vector", "dimension": DIM,
         "method": {"name": "hnsw", "engine": "faiss", "space_type": "innerproduct", "parameters": {"m": 16}}}
    v.update(over)
    return {"settings": {"index": {"knn": True}}, "mappings": {"properties": {"v": v}}}


@pytest.mark.parametrize("body, reason", [
    (_vector_mapping(method={"name": "hnsw", "engine": "nmslib", "space_type": "l2"}), "nmslib"),
    (_vector_mapping(dimension=0), "Dimension"),
    (_vector_mapping(dimension=20000), "Dimension"),
    (_vector_mapping(method={"name": "hnsw", "engine": "faiss", "space_type": "dot"}), "space_type"),
    (_vector_mapping(method={"name": "hnsw", "engine": "faiss", "parameters": {"ef": 3}}), "Unknown parameter"),
    (_vector_mapping(method={"name": "hnsw", "engine": "lucene", "space_type": "l1"}), "space_type"),
    (_vector_mapping(data_type="byte", mode="on_disk"), "non-float"),
    (_vector_mapping(similarity="cosine"), "unknown parameter"),
    ({"mappings": {"properties": {"f": {"type": "dense_vector"}}}}, "No handler for type"),
    ({"mappings": {"properties": {"f": {"type": "keyword"}}, "analyzer": "x"}}, "unsupported parameters"),
    ({"settings": {"index": {"knn": False}}, "mappings": _vector_mapping()["mappings"]}, "index.knn"),
])
def test_refuses_invalid_mappings(fake_opensearch, body, reason):
    r = call(fake_opensearch, "PUT", "/x", body)
    assert r.status_code == 400 and reason in error_of(r)[1]
    assert fake_opensearch.indices == {}


def test_refuses_bad_index_names_and_duplicates(fake_opensearch):
    assert error_of(call(fake_opensearch, "PUT", "/Upper", {}))[0] == "invalid_index_name_exception"
    knn_index(fake_opensearch)
    assert error_of(call(fake_opensearch, "PUT", "/i", {}))[0] == "resource_already_exists_exception"


@pytest.mark.parametrize("raw, reason", [
    (b'{"index": {"_index": "i", "_id": "a"}}\n{"vector": [1, 0, 0, 0]}', "terminated by a newline"),
    (b'not json\n', "Malformed action/metadata line [1]"),
    (b'{"index": {"_index": "i", "_id": "a"}, "extra": 1}\n{}\n', "Malformed action/metadata line [1]"),
    (b'{"upsert": {"_index": "i"}}\n{}\n', "Malformed action/metadata line [1]"),
    (b'{"index": {"_index": "i", "_id": "a", "_type": "doc"}}\n{}\n', "unknown parameter [_type]"),
    (b'{"index": {"_id": "a"}}\n{}\n', "index is missing"),
    (b'', "no requests added"),
])
def test_refuses_malformed_bulk_bodies(fake_opensearch, raw, reason):
    knn_index(fake_opensearch)
    r = call(fake_opensearch, "POST", "/_bulk", raw=raw, ctype="application/x-ndjson")
    assert r.status_code == 400 and reason in error_of(r)[1]


def test_bulk_items_fail_individually(fake_opensearch):
    knn_index(fake_opensearch)
    lines = [{"index": {"_index": "i", "_id": "ok"}}, {"vector": [1, 0, 0, 0]},
             {"index": {"_index": "i", "_id": "short"}}, {"vector": [1, 0, 0]},
             {"index": {"_index": "missing", "_id": "x"}}, {"vector": [1, 0, 0, 0]},
             {"delete": {"_index": "i", "_id": "never"}}]
    raw = "".join(json.dumps(l) + "\n" for l in lines).encode()
    r = call(fake_opensearch, "POST", "/_bulk", raw=raw)
    body = r.json()
    assert r.status_code == 200 and body["errors"] is True
    statuses = [next(iter(i.values()))["status"] for i in body["items"]]
    # A missing index is created by the write (action.auto_create_index defaults to true), with a
    # guessed mapping: the vector becomes a plain number field (its first value, 1, a long).
    assert statuses == [201, 400, 201, 404]
    assert "dimension mismatch" in body["items"][1]["index"]["error"]["reason"]
    assert fake_opensearch.indices["missing"].props["vector"] == {"type": "long"}
    assert "error" not in body["items"][3]["delete"]  # a missing document is no failure
    assert call(fake_opensearch, "POST", "/_bulk", raw=raw, ctype="text/plain").status_code == 406


@pytest.mark.parametrize("knn, reason", [
    ({"vector": {"k": 3}}, "requires query vector"),
    ({"vector": {"vector": [1, 0, 0, 0]}}, "exactly one of k"),
    ({"vector": {"vector": [1, 0, 0], "k": 3}}, "invalid dimension: 3"),
    ({"vector": {"vector": [1, 0, 0, 0], "k": 0}}, "0 < k"),
    ({"vector": {"vector": [1, 0, 0, 0], "k": 3, "num_candidates": 9}}, "unknown token"),
    ({"vector": {"vector": [1, 0, 0, 0], "k": 3, "min_score": 0.5}}, "exactly one of k"),
    ({"width": {"vector": [1, 0, 0, 0], "k": 3}}, "not knn_vector"),
    ({"vector": {"vector": [1, 0, 0, 0], "k": 3, "method_parameters": {"nprobe": 3}}}, "method_parameters"),
])
def test_refuses_bad_knn_queries(fake_opensearch, knn, reason):
    knn_index(fake_opensearch)
    r = call(fake_opensearch, "POST", "/i/_search", {"query": {"knn": knn}})
    assert r.status_code == 400 and reason in error_of(r)[1]


def test_refuses_unknown_search_keys_and_filter_types(fake_opensearch):
    knn_index(fake_opensearch)
    r = call(fake_opensearch, "POST", "/i/_search", {"query": {"match_all": {}}, "post_filters": {}})
    assert r.status_code == 400 and error_of(r)[0] == "parsing_exception"
    r = call(fake_opensearch, "POST", "/i/_search", {"query": {"term": {"width": "wide"}}})
    assert r.status_code == 400 and error_of(r)[0] == "query_shard_exception"
    r = call(fake_opensearch, "POST", "/i/_search", {"query": {"term": {"url": "x"}}})
    assert r.status_code == 400 and "not indexed" in error_of(r)[1]


def test_innerproduct_scores_follow_the_documented_formula(fake_opensearch):
    knn_index(fake_opensearch)
    docs = {"same": [1, 0, 0, 0], "orth": [0, 1, 0, 0], "opp": [-1, 0, 0, 0], "half": [0.6, -0.8, 0, 0]}
    raw = "".join(json.dumps({"index": {"_index": "i", "_id": k}}) + "\n" + json.dumps({"vector": v}) + "\n"
                  for k, v in docs.items()).encode()
    assert call(fake_opensearch, "POST", "/_bulk", raw=raw).json()["errors"] is False
    q = {"query": {"knn": {"vector": {"vector": [1, 0, 0, 0], "k": 4}}}}
    assert call(fake_opensearch, "POST", "/i/_search", q).json()["hits"]["hits"] == []  # not refreshed yet
    call(fake_opensearch, "POST", "/i/_refresh")
    hits = call(fake_opensearch, "POST", "/i/_search", q).json()["hits"]["hits"]
    got = {h["_id"]: h["_score"] for h in hits}
    assert got == pytest.approx({"same": 2.0, "half": 1.6, "orth": 1.0, "opp": 0.5})


def test_aliases_are_swapped_atomically_or_not_at_all(fake_opensearch):
    knn_index(fake_opensearch, "a")
    knn_index(fake_opensearch, "b")
    assert call(fake_opensearch, "POST", "/_aliases", {"actions": [{"add": {"index": "a", "alias": "live"}}]}).ok
    r = call(fake_opensearch, "POST", "/_aliases", {"actions": [{"remove": {"index": "a", "alias": "live"}},
                                                                {"add": {"index": "missing", "alias": "live"}}]})
    assert r.status_code == 404 and fake_opensearch.aliases == {"live": {"a"}}  # nothing applied
    r = call(fake_opensearch, "POST", "/_aliases", {"actions": [{"add": {"index": "a", "alias": "b"}}]})
    assert error_of(r)[0] == "invalid_alias_name_exception"
    assert call(fake_opensearch, "GET", "/live/_mapping").json().keys() == {"a"}
    assert call(fake_opensearch, "GET", "/nothing-*/_mapping").json() == {}
    assert error_of(call(fake_opensearch, "GET", "/nothing/_mapping"))[0] == "index_not_found_exception"


def test_static_settings_cannot_change_on_an_open_index(fake_opensearch):
    knn_index(fake_opensearch)
    r = call(fake_opensearch, "PUT", "/i/_settings", {"index": {"number_of_shards": 3}})
    assert r.status_code == 400 and "non dynamic" in error_of(r)[1]
    assert call(fake_opensearch, "PUT", "/i/_settings", {"index": {"refresh_interval": "-1"}}).ok


def test_refuses_unknown_url_parameters(fake_opensearch):
    knn_index(fake_opensearch)
    r = call(fake_opensearch, "POST", "/i/_refresh?request_timeout=30")
    assert r.status_code == 400 and "unrecognized parameter: [request_timeout]" in error_of(r)[1]


# -- the engine's rules the fake encodes (sources in fake_opensearch_rules.py and FAKE_OPENSEARCH.md) --
@pytest.mark.parametrize("engine, mode, comp, version, ok", [
    ("faiss", None, "2x", "3.1.0", True), ("faiss", "on_disk", "32x", "3.1.0", True),
    ("faiss", "on_disk", None, "3.1.0", True), ("faiss", None, "16x", "2.19.2", True),
    ("faiss", None, "4x", "3.1.0", False), ("faiss", None, "4x", "2.19.2", False),
    ("lucene", None, "2x", "3.1.0", False), ("lucene", None, "8x", "3.1.0", False),
    ("lucene", "on_disk", None, "3.1.0", True), ("lucene", None, "4x", "2.19.2", True),
    ("lucene", "on_disk", "1x", "3.1.0", False), ("faiss", "on_disk", "1x", "2.19.2", False),
    ("faiss", "on_disk", "1x", "3.1.0", True),  # 3.1's faiss resolver no longer refuses it
    ("faiss", None, "3x", "3.1.0", False),
])
def test_compression_levels_per_engine_and_version(engine, mode, comp, version, ok):
    from fake_opensearch import FakeOpenSearch

    v = {"type": "knn_vector", "dimension": DIM,
         "method": {"name": "hnsw", "engine": engine, "space_type": "innerproduct"}}
    v.update({k: x for k, x in (("mode", mode), ("compression_level", comp)) if x})
    with FakeOpenSearch(version=version) as fake:
        r = call(fake, "PUT", "/x", {"settings": {"index": {"knn": True}}, "mappings": {"properties": {"v": v}}})
        assert (r.status_code == 200) is ok, r.text
        if not ok:
            assert error_of(r)[0] == "mapper_parsing_exception"


@pytest.mark.parametrize("version, ok", [("2.19.2", True), ("3.1.0", False)])
def test_settings_and_engines_removed_in_3(version, ok):
    from fake_opensearch import FakeOpenSearch

    with FakeOpenSearch(version=version) as fake:
        r = call(fake, "PUT", "/a", {"settings": {"index": {"knn": True, "knn.space_type": "l2"}}})
        assert (r.status_code == 200) is ok
        nmslib = _vector_mapping(method={"name": "hnsw", "engine": "nmslib", "space_type": "l2"})
        assert (call(fake, "PUT", "/b", nmslib).status_code == 200) is ok


def _bulk(fake, path, lines):
    raw = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return call(fake, "POST", path, raw=raw, ctype="application/x-ndjson")


def test_an_id_over_512_bytes_fails_the_whole_bulk_request(fake_opensearch):
    knn_index(fake_opensearch)
    r = _bulk(fake_opensearch, "/i/_bulk", [{"index": {"_id": "fine"}}, {"vector": [1, 0, 0, 0]},
                                            {"index": {"_id": "é" * 257}}, {"vector": [1, 0, 0, 0]}])
    assert r.status_code == 400 and error_of(r)[0] == "action_request_validation_exception"
    assert "must be no longer than 512 bytes but was: 514" in error_of(r)[1]
    assert fake_opensearch.doc_count("i") == 0  # nothing applied, not even the valid item
    ok = _bulk(fake_opensearch, "/i/_bulk", [{"index": {"_id": "x" * 512}}, {"vector": [1, 0, 0, 0]}])
    assert ok.json()["errors"] is False


def test_objects_in_leaf_fields_fail_the_document_whatever_ignore_malformed_says(fake_opensearch):
    knn_index(fake_opensearch)  # clipsearch's mapping: index.mapping.ignore_malformed true
    r = _bulk(fake_opensearch, "/i/_bulk", [
        {"index": {"_id": "obj"}}, {"vector": [1, 0, 0, 0], "orientation": {"a": 1}},
        {"index": {"_id": "list"}}, {"vector": [1, 0, 0, 0], "photographer": ["x", {"y": None}]},
        {"index": {"_id": "nested-arrays"}}, {"vector": [1, 0, 0, 0], "photographer": [["a", "b"], "c"]},
        {"index": {"_id": "bad-number"}}, {"vector": [1, 0, 0, 0], "width": "wide"}])
    items = [next(iter(i.values())) for i in r.json()["items"]]
    assert [i["status"] for i in items] == [400, 400, 201, 201]
    assert items[0]["error"]["type"] == "mapper_parsing_exception"
    assert "of type [keyword] in document with id 'obj'. Preview of field's value: '{a=1}'" in items[0]["error"]["reason"]


def test_numbers_are_coerced_as_the_engine_does(fake_opensearch):
    knn_index(fake_opensearch)
    fake_opensearch.indices["i"].settings["index.mapping.ignore_malformed"] = "false"
    r = _bulk(fake_opensearch, "/i/_bulk?refresh=true", [
        {"index": {"_id": "s"}}, {"vector": [1, 0, 0, 0], "width": "42", "featured": "true"},
        {"index": {"_id": "f"}}, {"vector": [0, 1, 0, 0], "width": 7.9, "featured": ""},
        {"index": {"_id": "bool"}}, {"vector": [0, 0, 1, 0], "width": True},
        {"index": {"_id": "big"}}, {"vector": [0, 0, 1, 0], "width": 2**31},
        {"index": {"_id": "flag"}}, {"vector": [0, 0, 0, 1], "featured": "yes"}])
    assert [next(iter(i.values()))["status"] for i in r.json()["items"]] == [201, 201, 400, 400, 400]

    def ids(query):
        return sorted(h["_id"] for h in call(fake_opensearch, "POST", "/i/_search", {"query": query}).json()["hits"]["hits"])

    assert ids({"term": {"width": 42}}) == ["s"] and ids({"term": {"width": 7}}) == ["f"]  # truncated
    assert ids({"term": {"featured": True}}) == ["s"] and ids({"term": {"featured": False}}) == ["f"]


def test_rejections_use_opensearchs_own_429_type(fake_opensearch):
    knn_index(fake_opensearch)
    fake_opensearch.reject_items(429, times=1, every=1)
    r = _bulk(fake_opensearch, "/i/_bulk", [{"index": {"_id": "a"}}, {"vector": [1, 0, 0, 0]}])
    assert r.json()["items"][0]["index"]["error"]["type"] == "rejected_execution_exception"
    fake_opensearch.fail(429, path="_search")
    assert error_of(call(fake_opensearch, "POST", "/i/_search", {}))[0] == "rejected_execution_exception"


def test_a_force_merge_blocks_unless_asked_not_to_wait():
    import time

    from fake_opensearch import FakeOpenSearch

    with FakeOpenSearch(merge_seconds=0.6) as fake:
        knn_index(fake)
        for n in range(3):
            _bulk(fake, "/i/_bulk?refresh=true", [{"index": {"_id": str(n)}}, {"vector": [1, 0, 0, 0]}])
        assert fake.indices["i"].segment_count() == 3
        t0 = time.monotonic()
        r = call(fake, "POST", "/i/_forcemerge?max_num_segments=1&wait_for_completion=false")
        assert time.monotonic() - t0 < 0.5 and r.json()["task"].startswith("fake-node:")
        stats = call(fake, "GET", "/i/_stats/segments").json()
        assert stats["indices"]["i"]["primaries"]["segments"]["count"] == 3  # still merging
        t0 = time.monotonic()
        assert call(fake, "POST", "/i/_forcemerge?max_num_segments=1").json()["_shards"]["failed"] == 0
        assert time.monotonic() - t0 >= 0.6 and fake.indices["i"].segment_count() == 1


@pytest.mark.parametrize("space, expected", [
    ("l2", {"same": 1.0, "near": 1 / (1 + 0.25), "far": 1 / (1 + 4.0)}),  # 1 / (1 + squared distance)
    ("cosinesimil", {"same": 1.0, "near": 1.0, "far": 0.0}),  # (2 - (1 - cos)) / 2
    ("innerproduct", {"same": 2.0, "near": 2.5, "far": 0.5}),  # 1 + ip, or 1 / (1 - ip) below 0
])
def test_knn_scores_follow_the_field_space_type(fake_opensearch, space, expected):
    body = _vector_mapping(method={"name": "hnsw", "engine": "faiss", "space_type": space})
    assert call(fake_opensearch, "PUT", "/s", body).status_code == 200
    docs = {"same": [1, 0, 0, 0], "near": [1.5, 0, 0, 0], "far": [-1, 0, 0, 0]}
    _bulk(fake_opensearch, "/s/_bulk?refresh=true",
          [line for k, v in docs.items() for line in ({"index": {"_id": k}}, {"v": v})])
    hits = call(fake_opensearch, "POST", "/s/_search", {"query": {"knn": {"v": {"vector": [1, 0, 0, 0], "k": 3}}}})
    got = {h["_id"]: h["_score"] for h in hits.json()["hits"]["hits"]}
    assert got == pytest.approx(expected, abs=1e-6)


def test_source_filters_given_as_strings(fake_opensearch):
    call(fake_opensearch, "POST", "/m/_doc?refresh=true", {"director": "B", "title": "M", "year": 2011})
    r = call(fake_opensearch, "POST", "/m/_search", {"_source": {"includes": "director", "excludes": "year"}})
    assert r.json()["hits"]["hits"][0]["_source"] == {"director": "B"}
    r = call(fake_opensearch, "POST", "/m/_search", {"_source": "t*"})
    assert r.json()["hits"]["hits"][0]["_source"] == {"title": "M"}
