"""The OpenSearch backend, behaviour first.

Every test using the `cluster` fixture runs against the strict fake (tests/fake_opensearch.py)
and, when OPENSEARCH_URL is set, against that real cluster too (`pytest -m opensearch` runs only
those). Tests that inject faults or look inside the server run against the fake only.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, replace

import numpy as np
import pytest

from clipsearch.config import IndexSettings, OpenSearchSettings
from clipsearch.errors import (BackendUnavailable, ClipsearchError, DocumentsRejected, IndexMissing, InvalidInput,
                               ModelMismatch, NotFound)
from clipsearch.index import Document, check_model, open_index
from clipsearch.index import opensearch_mapping as om
from clipsearch.index.faiss_index import FaissIndex
from clipsearch.index.opensearch import OpenSearchIndex
from clipsearch.index.opensearch_bulk import BulkWriter
from clipsearch.index.opensearch_client import make_client
from fake_opensearch import FakeOpenSearch

DIM = 16
REAL_URL = os.environ.get("OPENSEARCH_URL")


@dataclass
class Cluster:
    url: str
    fake: FakeOpenSearch | None
    alias: str

    def settings(self, **over) -> OpenSearchSettings:
        env = {"OPENSEARCH_URL": self.url, "OPENSEARCH_INDEX": self.alias, "OPENSEARCH_REPLICAS": "0",
               "BACKEND": "opensearch"}
        if self.fake is None:  # the real cluster: whatever auth the environment configures
            env.update({k: v for k, v in os.environ.items() if k.startswith(("OPENSEARCH_", "AWS_"))})
            env["OPENSEARCH_INDEX"], env["OPENSEARCH_REPLICAS"] = self.alias, "0"
        return replace(OpenSearchSettings.from_env(env), **over)

    def client(self):
        return make_client(self.settings())


def _targets():
    real = pytest.param("real", marks=[pytest.mark.opensearch] + (
        [] if REAL_URL else [pytest.mark.skip(reason="OPENSEARCH_URL is not set: no real cluster to test against")]))
    return [pytest.param("fake"), real]


@pytest.fixture(params=_targets())
def cluster(request):
    alias = f"cs-test-{uuid.uuid4().hex[:8]}"
    if request.param == "fake":
        with FakeOpenSearch() as fake:
            yield Cluster(fake.url, fake, alias)
        return
    c = Cluster(REAL_URL, None, alias)
    yield c
    client = c.client()
    for name in client.indices.get_mapping(index=f"{alias}-*"):
        client.indices.delete(index=name)


@pytest.fixture
def fake():
    with FakeOpenSearch() as f:
        yield f


def fast_bulk(client, **kw) -> BulkWriter:
    return BulkWriter(client, **{"max_docs": 25, "threads": 3, "backoff": 0.001, "max_backoff": 0.01, **kw})


def open_ingest(settings: OpenSearchSettings, model_id="org/model-a", dim=DIM, **kw) -> OpenSearchIndex:
    client = make_client(settings)
    return OpenSearchIndex.from_settings(settings, model_id=model_id, dim=dim, client=client,
                                         bulk=fast_bulk(client), **kw)


def docs(n, seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    return [Document(f"p{i}", vecs[i], {"orientation": ("landscape", "portrait", "squarish")[i % 3],
                                        "width": 100 * i, "photographer_username": f"user{i % 5}",
                                        "featured": i % 2 == 0, "url": f"https://img.example/{i}.jpg",
                                        "description": f"photo number {i}"})
            for i in range(n)], vecs


def loaded(settings, n=120, seed=0, **kw):
    index = open_ingest(settings, **kw)
    ds, vecs = docs(n, seed)
    with index.loading():
        assert index.upsert(ds) == n
        index.save()
    return index, ds, vecs


# -- index creation --------------------------------------------------------------------------
def test_new_index_mapping_and_settings(cluster):
    index = open_ingest(cluster.settings())
    client = cluster.client()
    mapping = client.indices.get_mapping(index=index.index)[index.index]["mappings"]
    vec = mapping["properties"]["vector"]
    assert vec["type"] == "knn_vector" and vec["dimension"] == DIM
    assert vec["method"]["name"] == "hnsw" and vec["method"]["engine"] == "faiss"
    assert vec["method"].get("space_type", vec.get("space_type")) == "innerproduct"
    params = vec["method"]["parameters"]  # a cluster may add defaults (an encoder) when it answers
    assert (params["m"], params["ef_construction"]) == (32, 200)
    assert mapping["_meta"]["clipsearch"]["model_id"] == "org/model-a" and mapping["_meta"]["clipsearch"]["dim"] == DIM
    props = mapping["properties"]
    assert props["orientation"]["type"] == "keyword" and props["width"]["type"] == "integer"
    assert props["aspect_ratio"]["type"] == "float" and props["featured"]["type"] == "boolean"
    assert props["url"]["index"] is False and props["description"]["type"] == "text"
    flat = client.indices.get_settings(index=index.index, params={"flat_settings": "true"})[index.index]["settings"]
    assert flat["index.knn"] == "true" and flat["index.knn.algo_param.ef_search"] == "128"
    assert not any(k.startswith("index.knn.space_type") for k in flat)
    assert index.index.startswith(f"{cluster.alias}-org-model-a-{DIM}-")


def test_index_body_has_no_removed_settings_and_rejects_nmslib():
    body = om.index_body(OpenSearchSettings(), model_id="m", dim=4)
    assert "space_type" not in str(body["settings"])
    with pytest.raises(ValueError, match="nmslib"):
        om.index_body(OpenSearchSettings(engine="nmslib"), model_id="m", dim=4)
    with pytest.raises(ValueError, match="float vectors only"):
        om.index_body(OpenSearchSettings(data_type="byte", mode="on_disk"), model_id="m", dim=4)
    with pytest.raises(ValueError, match="not offered by the lucene engine"):
        om.index_body(OpenSearchSettings(engine="lucene", mode="on_disk", compression="32x"), model_id="m", dim=4)
    lucene = om.index_body(OpenSearchSettings(engine="lucene", m=8, ef_construction=64), model_id="m", dim=4)
    assert lucene["mappings"]["properties"]["vector"]["method"]["engine"] == "lucene"
    compact = om.index_body(OpenSearchSettings(mode="on_disk", compression="32x"), model_id="m", dim=4)
    compact = compact["mappings"]["properties"]["vector"]
    assert compact["mode"] == "on_disk" and compact["compression_level"] == "32x"


def test_physical_names_are_valid_and_carry_the_model():
    name = om.physical_name("clipsearch", "openai/CLIP-ViT-B/32", 512, now=0)
    assert name == "clipsearch-openai-clip-vit-b-32-512-19700101000000000"
    from fake_opensearch import check_index_name

    check_index_name(name)


# -- writing and reading ---------------------------------------------------------------------
def test_roundtrip_and_idempotent_upsert(cluster):
    index, ds, vecs = loaded(cluster.settings())
    assert index.count() == 120 and sorted(index.ids()) == sorted(d.id for d in ds)
    got = index.get("p7")
    np.testing.assert_allclose(got.vector, vecs[7] / np.linalg.norm(vecs[7]), atol=1e-6)
    assert got.metadata == ds[7].metadata
    with index.loading():  # the same documents again: still one copy each
        index.upsert(ds[:50])
        index.save()
    assert index.count() == 120
    twice = [Document("p0", vecs[1], {"v": 1}), Document("p0", vecs[2], {"v": 2})]
    assert index.upsert(twice) == 2  # like the embedded index: the last one wins
    index.save()
    assert index.get("p0").metadata == {"v": 2} and index.count() == 120
    assert index.delete(["p1", "p2", "nope"]) == 2
    index.save()
    assert index.count() == 118 and "p1" not in index.ids()
    with pytest.raises(NotFound):
        index.get("p1")


def test_ids_pages_through_more_than_one_page(fake, monkeypatch):
    monkeypatch.setattr("clipsearch.index.opensearch.PAGE", 7)
    index, ds, _ = loaded(Cluster(fake.url, fake, "pages").settings(), n=30)
    assert sorted(index.ids()) == sorted(d.id for d in ds)


def test_hits_carry_metadata_without_the_vector(cluster):
    index, ds, vecs = loaded(cluster.settings())
    hit = index.search(vecs[3], k=1)[0]
    assert hit.id == "p3" and hit.score == pytest.approx(1.0, abs=1e-5)
    assert hit.metadata == ds[3].metadata and "vector" not in hit.metadata and "doc_id" not in hit.metadata


def test_parity_with_the_embedded_backend(cluster):
    index, ds, vecs = loaded(cluster.settings(), n=200, seed=4)
    embedded = FaissIndex(None, model_id="org/model-a", dim=DIM)
    embedded.upsert(ds)
    rng = np.random.default_rng(11)
    cases = [({}, None), ({"orientation": "portrait"}, None), ({"width": {"gte": 5000, "lt": 15000}}, None),
             ({"featured": True, "photographer_username": ["user1", "user3"]}, None), ({}, 0.3), ({}, -0.2)]
    for i in range(18):
        q = rng.standard_normal(DIM) if i % 3 else -vecs[i]  # some queries far from everything
        filters, min_score = cases[i % len(cases)]
        want = embedded.search(q, k=10, filters=filters or None, min_score=min_score)
        got = index.search(q, k=10, filters=filters or None, min_score=min_score)
        assert [h.id for h in got] == [h.id for h in want], (filters, min_score)
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
        assert [h.metadata for h in got] == [h.metadata for h in want]


def test_lucene_engine_gives_the_same_cosines(cluster):
    index, ds, vecs = loaded(cluster.settings(engine="lucene", m=16,
                                              ef_construction=100), n=100, seed=9)
    assert index.engine == "lucene"
    embedded = FaissIndex(None, model_id="org/model-a", dim=DIM)
    embedded.upsert(ds)
    for q in (vecs[3], -vecs[3], vecs[4] - vecs[5]):
        got, want = index.search(q, k=8, filters={"featured": True}), embedded.search(q, k=8, filters={"featured": True})
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


def test_filter_inside_knn_still_returns_k(cluster):
    index, ds, vecs = loaded(cluster.settings(), n=150)
    # 6 of 150 documents match; a post-filter on the global top 10 would return about none.
    rare = [d.id for d in ds if d.metadata["width"] % 2500 == 0]
    assert len(rare) == 6
    hits = index.search(vecs[1], k=5, filters={"width": [int(d.metadata["width"]) for d in ds if d.id in rare]})
    assert len(hits) == 5 and {h.id for h in hits} <= set(rare)
    hits = index.search(vecs[1], k=20, filters={"orientation": "squarish", "featured": False})
    assert len(hits) == 20 and all(h.metadata["orientation"] == "squarish" and not h.metadata["featured"] for h in hits)
    assert index.search(vecs[1], k=5, filters={"width": "100"}) == []  # a string never equals a number
    assert index.search(vecs[1], k=5, filters={"featured": 1}) == []  # 1 is not True
    assert index.search(vecs[1], k=5, filters={"orientation": {"gte": 1}}) == []


def test_min_score_is_a_cosine(cluster):
    index, ds, vecs = loaded(cluster.settings())
    q = vecs[0] + 0.5 * vecs[1]
    all_hits = index.search(q, k=50)
    for threshold in (0.9, 0.5, 0.0, -0.3):
        hits = index.search(q, k=50, min_score=threshold)
        assert [h.id for h in hits] == [h.id for h in all_hits if h.score >= threshold]
    assert index.search(q, k=5, min_score=1.0) == []


@pytest.mark.parametrize("cos", [-1.0, -0.75, -1e-7, 0.0, 1e-7, 0.42, 1.0])
def test_score_conversion_roundtrip(cos):
    assert om.to_cosine(om.ip_to_score(cos), "float", None) == pytest.approx(cos, abs=1e-12)
    assert om.ip_to_score(cos) > 0
    scale = om.byte_scale(512)
    assert om.to_cosine(om.ip_to_score(cos * scale * scale), "byte", scale) == pytest.approx(cos, abs=1e-9)
    assert om.min_score_param(cos, "float", None) <= om.ip_to_score(cos)


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "k must"), ({"k": 10_001}, "at most"), ({"k": True}, "k must"), ({"k": 2.5}, "k must"),
    ({"vector": np.zeros(DIM)}, "all zeros"), ({"vector": np.ones(DIM + 1)}, "dimensions"),
    ({"vector": np.full(DIM, np.nan)}, "NaN"), ({"min_score": 1.5}, "min_score"), ({"min_score": "0.2"}, "min_score"),
    ({"filters": {"description": "x"}}, "not filterable"), ({"filters": {"nosuchfield": 1}}, "not filterable"),
    ({"filters": {"width": {"near": 3}}}, "range"), ({"filters": "orientation=landscape"}, "object"),
    ({"filters": {"width": []}}, "1 to"), ({"filters": {"bad field!": 1}}, "valid field"),
])
def test_bad_search_input_is_invalid_input(fake, kwargs, match):
    index, _, vecs = loaded(Cluster(fake.url, fake, "bad").settings(), n=10)
    call = {"vector": vecs[0], "k": 5, **kwargs}
    with pytest.raises(InvalidInput, match=match):
        index.search(call.pop("vector"), **call)


@pytest.mark.parametrize("doc, match", [
    (Document("", np.ones(DIM)), "non-empty"), (Document("x" * 513, np.ones(DIM)), "513 bytes"),
    (Document("é" * 257, np.ones(DIM)), "514 bytes"),  # 257 characters, 514 bytes of UTF-8
    (Document("bad\ud800", np.ones(DIM)), "not valid Unicode"),
    (Document("a", np.ones(DIM + 2)), "dimensions"), (Document("a", np.zeros(DIM)), "zeros"),
    (Document("a", np.full(DIM, np.inf)), "NaN"), (Document("a", np.ones(DIM), {"vector": 1}), "reserved"),
    (Document("a", np.ones(DIM), {"x": object()}), "JSON"), (Document("a", np.ones(DIM), {"featured": "yes"}), "featured"),
    (Document("a", np.ones(DIM), {"x": float("nan")}), "JSON"),
    (Document("a", np.ones(DIM), {"orientation": {"nested": "object"}}), "holds an object"),
    (Document("a", np.ones(DIM), {"photographer": ["x", {"y": 1}]}), "holds an object"),
    (Document("a", np.ones(DIM), metadata=["not", "a", "dict"]), "dict"),
])
def test_a_bad_document_is_refused_alone_and_the_others_are_written(fake, doc, match):
    index = open_ingest(Cluster(fake.url, fake, "bad").settings())
    with pytest.raises(DocumentsRejected, match=match) as err:
        index.upsert([Document("good", np.ones(DIM)), doc])
    assert err.value.written == 1 and len(err.value.rejected) == 1 and isinstance(err.value, InvalidInput)
    assert list(fake.indices[index.index].docs) == ["good"]


def test_a_document_the_cluster_refuses_is_reported_and_the_others_are_written(fake):
    index = open_ingest(Cluster(fake.url, fake, "refused").settings())
    fake.indices[index.index].props["width"]["ignore_malformed"] = False  # as a cluster without the setting
    with pytest.raises(DocumentsRejected, match="width") as err:
        index.upsert([Document("ok", np.ones(DIM), {"width": 3}), Document("odd", np.ones(DIM), {"width": "wide"})])
    assert set(err.value.rejected) == {"odd"} and err.value.written == 1
    assert "mapper_parsing_exception" in err.value.rejected["odd"]
    assert list(fake.indices[index.index].docs) == ["ok"]


def test_wrongly_typed_metadata_keeps_the_document(cluster):
    index = open_ingest(cluster.settings())
    index.upsert([Document("odd", np.ones(DIM), {"width": "wide", "aspect_ratio": "tall", "orientation": "portrait"})])
    index.save()
    assert index.count() == 1 and index.get("odd").metadata["width"] == "wide"
    assert [h.id for h in index.search(np.ones(DIM), k=3, filters={"orientation": "portrait"})] == ["odd"]


# -- versioning -------------------------------------------------------------------------------
def test_model_change_builds_a_new_index_and_swaps_the_alias(cluster):
    settings = cluster.settings()
    a, _, vecs = loaded(settings)
    server = OpenSearchIndex.from_settings(settings, client=cluster.client())
    assert (server.model_id, server.dim, server.index) == ("org/model-a", DIM, a.index)
    check_model(server, "org/model-a", DIM)

    b = open_ingest(settings, model_id="org/model-b", dim=8)
    assert b.index != a.index and b.index.startswith(f"{cluster.alias}-org-model-b-8-")
    b.upsert(docs(30, seed=2, dim=8)[0])
    # Until the load is saved, the alias still serves model A.
    assert OpenSearchIndex.from_settings(settings, client=cluster.client()).index == a.index
    again = open_ingest(settings, model_id="org/model-b", dim=8)  # an interrupted run resumes its index
    assert again.index == b.index
    b.save()
    now = OpenSearchIndex.from_settings(settings, client=cluster.client())
    assert (now.model_id, now.dim, now.index, now.count()) == ("org/model-b", 8, b.index, 30)
    assert open_ingest(settings, model_id="org/model-b", dim=8).index == b.index  # same model: same index
    assert a.count() == 120  # the old index is kept for rollback
    # The server resolved its index at start-up: it keeps serving model A's vectors consistently.
    assert server.search(vecs[0], k=1)[0].id == "p0"


def test_alias_moves_only_when_a_load_completes(fake):
    settings = Cluster(fake.url, fake, "ckpt").settings()
    a, _, _ = loaded(settings, n=5)
    b = open_ingest(settings, model_id="org/model-b", dim=8)
    with pytest.raises(KeyboardInterrupt):
        with b.loading():
            b.upsert(docs(5, dim=8)[0])
            b.save()  # a checkpoint: refreshed, alias unchanged
            assert fake.aliases == {"ckpt": {a.index}} and b.count() == 5
            raise KeyboardInterrupt
    assert fake.aliases == {"ckpt": {a.index}}
    resumed = open_ingest(settings, model_id="org/model-b", dim=8)
    assert resumed.index == b.index and resumed.count() == 5
    with resumed.loading():
        resumed.upsert(docs(8, dim=8)[0])
        resumed.save()
        assert fake.aliases == {"ckpt": {a.index}}
    assert fake.aliases == {"ckpt": {b.index}}


def test_alias_moves_with_index_scoped_requests_new_one_first(fake):
    settings = Cluster(fake.url, fake, "swap").settings()
    a, _, _ = loaded(settings, n=5)
    b = open_ingest(settings, model_id="org/model-b", dim=8)
    b.upsert(docs(5, dim=8)[0])
    before = len(fake.requests)
    b.save()
    moves = [(r.method, r.path) for r in fake.requests[before:] if "_alias" in r.path and r.method != "GET"]
    # Add, then remove: no moment without an alias, and each URL names the index it changes
    # (the domain's policy is matched against URLs; POST /_aliases names its indexes in the body).
    assert moves == [("PUT", f"/{b.index}/_alias/swap"), ("DELETE", f"/{a.index}/_alias/swap")]
    assert fake.aliases == {"swap": {b.index}}


def test_an_alias_caught_between_two_generations_serves_the_newest(fake):
    """Killed between the move's two requests, the alias names both generations: readers take the
    newest (the one the move was heading to), the next ingest finishes the move."""
    settings = Cluster(fake.url, fake, "caught").settings()
    a, _, _ = loaded(settings, n=5)
    b = open_ingest(settings, model_id="org/model-b", dim=8)
    b.upsert(docs(4, dim=8)[0])
    b.client.indices.refresh(index=b.index)
    b.client.indices.put_alias(index=b.index, name="caught")  # the first request of the move only
    assert fake.aliases == {"caught": {a.index, b.index}}
    server = OpenSearchIndex.from_settings(settings, client=make_client(settings))
    assert (server.index, server.model_id, server.count()) == (b.index, "org/model-b", 4)
    again = open_ingest(settings, model_id="org/model-b", dim=8)
    with again.loading():
        again.save()
    assert fake.aliases == {"caught": {b.index}}
    fake.indices["caught-unrelated"] = fake.indices[a.index]  # an index that is not a generation of it
    fake.aliases["caught"].add("caught-unrelated")
    with pytest.raises(IndexMissing, match="points at 2 indices"):
        OpenSearchIndex.from_settings(settings, client=make_client(settings))


def test_open_index_dispatches_to_opensearch(fake):
    settings = Cluster(fake.url, fake, "dispatch").settings()
    loaded(settings, n=5)
    from clipsearch.index.opensearch_client import clear_cache

    clear_cache()
    backend = IndexSettings(backend="opensearch")
    index = open_index(backend, settings)
    assert isinstance(index, OpenSearchIndex) and index.count() == 5
    again = open_index(backend, settings, model_id="org/model-a", dim=DIM)
    assert again.index == index.index
    assert again.client is index.client  # one client (and its connection pool) per process, as in a warm Lambda
    clear_cache()


def test_missing_alias_is_index_missing_with_the_fix(cluster):
    with pytest.raises(IndexMissing, match=f"{cluster.alias}.*python -m ingest .*--backend opensearch"):
        OpenSearchIndex.from_settings(cluster.settings(), client=cluster.client())


def test_a_cluster_refusing_the_mapping_is_a_clear_error(fake, monkeypatch):
    import fake_opensearch_rules

    monkeypatch.delitem(fake_opensearch_rules.FIELD_PARAMS, "knn_vector")  # a cluster without the k-NN plugin
    with pytest.raises(ClipsearchError, match="creating the index.*400.*knn_vector"):
        open_ingest(Cluster(fake.url, fake, "noplugin").settings())


def test_another_alias_with_a_similar_name_is_never_resumed(fake):
    # "photos" + model "org/m" and "photos-org" + model "m" share the name prefix photos-org-m-8-
    first = open_ingest(Cluster(fake.url, fake, "photos-org").settings(), model_id="m", dim=8)
    other = open_ingest(Cluster(fake.url, fake, "photos").settings(), model_id="org/m", dim=8)
    assert other.index != first.index and other.index.startswith("photos-org-m-8-")


def test_index_deleted_under_a_running_server_is_index_missing(fake):
    settings = Cluster(fake.url, fake, "gone").settings()
    index, _, vecs = loaded(settings, n=5)
    cluster_client = make_client(settings)
    cluster_client.indices.delete(index=index.index)
    with pytest.raises(IndexMissing, match=index.index):
        index.search(vecs[0], k=1)


def test_a_warm_server_follows_the_alias_to_a_rebuilt_index_of_its_model(fake):
    settings = Cluster(fake.url, fake, "rebuilt").settings()
    old, _, vecs = loaded(settings, n=10)
    server = OpenSearchIndex.from_settings(settings, client=make_client(settings))
    # Rebuilt as byte vectors under the same model, then the old index deleted.
    client = make_client(settings)
    new = OpenSearchIndex.create(client, replace(settings, data_type="byte"), model_id="org/model-a",
                                 dim=DIM, live=old.index)
    new.upsert(docs(10)[0])
    new.save()
    client.indices.delete(index=old.index)
    assert server.search(vecs[2], k=1)[0].id == "p2" and server.index == new.index and server.data_type == "byte"
    # Swapped to another model and the old one deleted: not comparable, said so.
    other = open_ingest(settings, model_id="org/model-b", dim=8)
    other.upsert(docs(3, dim=8)[0])
    other.save()
    client.indices.delete(index=new.index)
    with pytest.raises(ModelMismatch, match="org/model-b"):
        server.count()


# -- bulk loading ---------------------------------------------------------------------------
def test_loading_pauses_refresh_and_replicas_and_restores_them(cluster):
    index = open_ingest(cluster.settings())
    client = cluster.client()
    client.indices.put_settings(index=index.index, body={"index.refresh_interval": "5s", "index.number_of_replicas": 0})

    def current():
        s = client.indices.get_settings(index=index.index, params={"flat_settings": "true"})[index.index]["settings"]
        return s.get("index.refresh_interval"), s.get("index.number_of_replicas")

    with index.loading():
        assert current() == ("-1", "0")
    assert current() == ("5s", "0")
    with pytest.raises(RuntimeError, match="boom"):
        with index.loading():
            index.upsert(docs(10)[0])
            raise RuntimeError("boom")
    assert current() == ("5s", "0")


def test_loading_restores_defaults_it_found_unset(fake):
    index = open_ingest(Cluster(fake.url, fake, "defaults").settings())
    before = dict(fake.indices[index.index].settings)
    with index.loading():
        assert fake.indices[index.index].settings["index.refresh_interval"] == "-1"
    assert fake.indices[index.index].settings == before and "index.refresh_interval" not in before


def test_documents_are_searchable_only_after_save(fake):
    index = open_ingest(Cluster(fake.url, fake, "refresh").settings())
    ds, vecs = docs(10)
    with index.loading():
        index.upsert(ds)
        assert index.search(vecs[0], k=3) == [] and index.count() == 0  # not refreshed yet
        index.save()
    assert index.search(vecs[0], k=1)[0].id == "p0"


def test_force_merge_is_optional(fake):
    settings = Cluster(fake.url, fake, "merge").settings()
    index, _, _ = loaded(settings, n=5)
    assert fake.indices[index.index].force_merges == 0
    index.save(force_merge=True)
    assert fake.indices[index.index].force_merges == 1
    merging = open_ingest(replace(settings, force_merge=True))
    merging.save()
    assert fake.indices[index.index].force_merges == 2


def test_bulk_under_faults_writes_every_document_exactly_once(fake, caplog):
    index = open_ingest(Cluster(fake.url, fake, "faults").settings())
    ds, _ = docs(300, seed=5)
    fake.fail(429, times=3, path="_bulk")
    fake.fail(503, times=2, path="_bulk")
    fake.drop(times=2, path="_bulk")
    fake.drop(times=2, path="_bulk", after=True)  # applied, but the answer is lost: re-sent, still once
    fake.reject_items(429, times=4, every=3)
    fake.reject_items(503, times=2, every=5)
    with caplog.at_level(logging.INFO, "clipsearch.index.opensearch_bulk"), index.loading():
        assert index.upsert(ds) == 300
        index.save()
    assert all(f.times == 0 for f in fake.faults)
    assert index.count() == 300 and sorted(index.ids()) == sorted(d.id for d in ds)
    assert fake.doc_count(index.index) == 300
    assert "re-sending those" in caplog.text and "retrying" in caplog.text
    # re-sent items only: the fake saw fewer index actions than 300 x attempts
    bulk_bodies = [r.body for r in fake.requests if r.path.endswith("_bulk")]
    assert sum(b.count(b'{"index"') for b in bulk_bodies) < 2 * 300


def test_bulk_chunks_by_bytes_and_count(fake):
    index = open_ingest(Cluster(fake.url, fake, "chunks").settings())
    index.bulk = BulkWriter(index.client, max_docs=40, max_bytes=6000, threads=2)
    ds, _ = docs(100)
    index.upsert(ds)
    bodies = [r.body for r in fake.requests if r.path.endswith("_bulk")]
    assert len(bodies) > 100 // 40 + 1
    assert all(len(b) <= 6000 and b.count(b"\n") // 2 <= 40 for b in bodies)
    assert fake.doc_count(index.index) == 100


def test_bulk_that_keeps_failing_is_backend_unavailable(fake):
    index = open_ingest(Cluster(fake.url, fake, "down").settings())
    index.bulk = fast_bulk(index.client, max_attempts=3)
    fake.fail(503, times=100, path="_bulk")
    with pytest.raises(BackendUnavailable, match="after 3 attempts"):
        index.upsert(docs(5)[0])


# -- errors ------------------------------------------------------------------------------------
def test_unreachable_cluster_is_backend_unavailable_with_cause_logged(caplog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    settings = OpenSearchSettings.from_env({"OPENSEARCH_URL": f"http://127.0.0.1:{port}", "OPENSEARCH_TIMEOUT": "2"})
    with caplog.at_level(logging.ERROR), pytest.raises(BackendUnavailable, match="unreachable"):
        OpenSearchIndex.from_settings(settings, client=make_client(settings))
    assert "Connection" in caplog.text or "refused" in caplog.text


@pytest.mark.parametrize("fault", ["503", "500", "429", "drop", "timeout"])
def test_failing_search_is_backend_unavailable(fake, fault, caplog):
    settings = replace(Cluster(fake.url, fake, "flaky").settings(), timeout=1)
    index, _, vecs = loaded(settings, n=5)
    index.client = make_client(settings)
    if fault == "drop":
        fake.drop(times=5, path="_search")
    elif fault == "timeout":
        fake.delay(1.5, times=5, path="_search")
    else:
        fake.fail(int(fault), times=5, path="_search")
    with caplog.at_level(logging.ERROR, "clipsearch.index.opensearch"), pytest.raises(BackendUnavailable) as err:
        index.search(vecs[0], k=3)
    assert err.value.retry_after > 0 and "searching" in caplog.text
    fake.clear_faults()
    assert index.search(vecs[0], k=1)[0].id == "p0"  # and it recovers


def test_a_transient_drop_is_retried_once_transparently(fake):
    index, _, vecs = loaded(Cluster(fake.url, fake, "blip").settings(), n=5)
    fake.drop(times=1, path="_search")
    assert index.search(vecs[0], k=1)[0].id == "p0"


# -- compact vectors ------------------------------------------------------------------------
def test_byte_vectors_quantise_and_score_as_cosines(cluster):
    settings = cluster.settings(data_type="byte")
    index, ds, vecs = loaded(settings, n=120, seed=6)
    assert index.data_type == "byte"
    embedded = FaissIndex(None, model_id="org/model-a", dim=DIM)
    embedded.upsert(ds)
    rng = np.random.default_rng(3)
    for _ in range(10):
        q = rng.standard_normal(DIM)
        got, want = index.search(q, k=5), embedded.search(q, k=5)
        assert got[0].id == want[0].id
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=0.02)
    # The server reads the data type and scale from the index, whatever its own settings say.
    server = OpenSearchIndex.from_settings(cluster.settings(), client=cluster.client())
    assert server.data_type == "byte" and server.byte_scale == om.byte_scale(DIM)
    g = server.get("p4")
    assert np.dot(g.vector, vecs[4] / np.linalg.norm(vecs[4])) > 0.999


def test_on_disk_mode_mapping(fake):
    index = open_ingest(Cluster(fake.url, fake, "ondisk").settings(mode="on_disk", compression="32x"))
    vec = fake.indices[index.index].mappings["properties"]["vector"]
    assert vec["mode"] == "on_disk" and vec["compression_level"] == "32x"
    assert (index.mode, index.compression) == ("on_disk", "32x")
    ds, vecs = docs(20)
    index.upsert(ds)
    index.save()
    assert index.search(vecs[5], k=3)[0].id == "p5"
    import json

    body = json.loads([r for r in fake.requests if r.path.endswith("_search")][-1].body)
    assert body["query"]["knn"]["vector"]["rescore"] == {"oversample_factor": 5.0}


def test_search_request_shape(fake):
    index, _, vecs = loaded(Cluster(fake.url, fake, "shape").settings(), n=5)
    before = len(fake.requests)
    index.search(vecs[0], k=3, filters={"orientation": "portrait"}, min_score=0.1)
    import json

    body = json.loads([r for r in fake.requests[before:] if r.path.endswith("_search")][0].body)
    knn = body["query"]["knn"]["vector"]
    assert knn["k"] == 3 and body["size"] == 3 and knn["method_parameters"] == {"ef_search": 128}
    assert knn["filter"] == {"bool": {"filter": [{"terms": {"orientation": ["portrait"]}}]}}
    assert body["_source"] == {"excludes": ["vector"]}  # doc_id comes back: on Serverless it is the only id
    assert 1.0999 < body["min_score"] <= 1.1 and "post_filter" not in body


# -- filters: the same meaning as the embedded backend, for any input --------------------------
def test_any_filters_mean_the_same_as_in_the_embedded_backend(fake):
    from hypothesis import given, settings as hsettings, strategies as st

    index, ds, vecs = loaded(Cluster(fake.url, fake, "fuzz").settings(), n=60, seed=8)
    embedded = FaissIndex(None, model_id="org/model-a", dim=DIM)
    embedded.upsert(ds)
    scalar = st.one_of(st.sampled_from(["landscape", "portrait", "user1", "user4", "squarish", ""]),
                       st.integers(-10, 7000), st.sampled_from([0, 100, 2500, 5900]), st.booleans(),
                       st.floats(-1e4, 1e4, allow_nan=False), st.text(max_size=5))
    bound = st.one_of(st.integers(-100, 7000), st.floats(-100, 7000, allow_nan=False))
    spec = st.one_of(scalar, st.lists(scalar, min_size=1, max_size=4),
                     st.dictionaries(st.sampled_from(["gt", "gte", "lt", "lte"]), bound, min_size=1, max_size=2))
    fields = st.sampled_from(["orientation", "width", "featured", "photographer_username", "height"])
    query = vecs[0] + 0.3 * vecs[1]

    @hsettings(max_examples=120, deadline=None, derandomize=True)
    @given(st.dictionaries(fields, spec, max_size=3), st.integers(1, 25))
    def same(filters, k):
        want = embedded.search(query, k=k, filters=filters)
        got = index.search(query, k=k, filters=filters)
        assert [h.id for h in got] == [h.id for h in want], filters
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)

    same()


def _within(fake, role: str, alias: str, since: int = 0) -> None:
    """Every request the fake saw since `since` is one infra/template.yaml's domain policy lets
    `role` send (matched by URL, as Amazon OpenSearch Service does)."""
    from test_infra import domain_path_checker, load_template

    allowed = domain_path_checker(load_template(), role, alias)
    refused = [(r.method, r.path) for r in fake.requests[since:] if not allowed(r.method, r.path)]
    assert not refused, refused


def test_the_server_path_stays_within_the_query_roles_permissions(fake):
    settings = Cluster(fake.url, fake, "clipsearch").settings()
    loaded(settings, n=10)
    before = len(fake.requests)
    server = OpenSearchIndex.from_settings(settings, client=make_client(settings))
    hit = server.search(server.get("p3").vector, k=3, filters={"orientation": "landscape"}, min_score=0.0)
    assert hit and server.count() == 10 and server.ids()
    _within(fake, "SearchFunctionRole", "clipsearch", before)


def test_the_ingest_path_stays_within_the_ingest_roles_permissions():
    """Creating, loading, checkpointing, deleting, merging, warming and moving the alias all fit
    the ingest role's policy, on a domain whose bulk bodies may not name an index."""
    with FakeOpenSearch(allow_explicit_index=False) as fake:
        settings = Cluster(fake.url, fake, "clipsearch").settings(force_merge=True)
        loaded(settings, n=10)
        b = open_ingest(settings, model_id="org/model-b", dim=8)
        with b.loading():
            b.upsert(docs(10, dim=8)[0])
            b.ids()
            b.get("p1")
            b.delete(["p2"])
            b.save()
        assert b.count() == 9 and fake.aliases == {"clipsearch": {b.index}}
        assert fake.indices[b.index].force_merges == 1 and fake.indices[b.index].warmups == 1
        _within(fake, "IngestRole", "clipsearch")


def test_bulk_requests_name_their_index_in_the_url_only():
    """A domain with rest.action.multi.allow_explicit_index=false refuses a bulk body naming an
    index; the backend's bulk requests go to /{index}/_bulk with none in the body."""
    with FakeOpenSearch(allow_explicit_index=False) as fake:
        index, _, _ = loaded(Cluster(fake.url, fake, "scoped").settings(), n=30)
        bulks = [r for r in fake.requests if r.path.split("?")[0].endswith("/_bulk")]
        assert bulks and all(r.path.startswith(f"/{index.index}/_bulk") for r in bulks)
        assert all(b'"_index"' not in r.body for r in bulks)
        import requests

        raw = b'{"index": {"_index": "elsewhere", "_id": "x"}}\n{}\n'
        r = requests.post(f"{fake.url}/{index.index}/_bulk", data=raw, headers={"Content-Type": "application/x-ndjson"},
                          timeout=5)
        assert r.status_code == 400 and "explicit index in bulk is not allowed" in r.text


# -- the engine's rules, checked on every cluster (the fake's table must be the engine's) ----------
@pytest.mark.parametrize("engine, mode, compression", [
    ("faiss", None, "2x"), ("faiss", None, "4x"), ("faiss", "on_disk", None), ("faiss", "on_disk", "1x"),
    ("faiss", "on_disk", "16x"), ("lucene", None, "2x"), ("lucene", None, "4x"), ("lucene", "on_disk", None),
    ("lucene", "on_disk", "1x"), ("lucene", None, "8x"),
])
def test_compression_table_is_the_engines(cluster, engine, mode, compression):
    """The fake's table (fake_opensearch_rules, from the k-NN resolvers) against what the cluster
    does, for the cluster's own version; and clipsearch refuses all the cluster refuses."""
    from opensearchpy.exceptions import RequestError

    from fake_opensearch_rules import ApiError, check_compression

    client = cluster.client()
    version = client.info()["version"]["number"]
    try:
        check_compression(engine, mode, compression, version)
        expected = True
    except ApiError:
        expected = False
    vector = {"type": "knn_vector", "dimension": 4,
              "method": {"name": "hnsw", "engine": engine, "space_type": "innerproduct"}}
    vector.update({k: v for k, v in (("mode", mode), ("compression_level", compression)) if v})
    name = f"{cluster.alias}-table"
    try:
        client.indices.create(index=name, body={"settings": {"index": {"knn": True, "number_of_replicas": 0}},
                                                "mappings": {"properties": {"v": vector}}})
        created = True
        client.indices.delete(index=name)
    except RequestError:
        created = False
    assert created is expected, (engine, mode, compression, version)
    if not created:  # whatever the cluster refuses, clipsearch refuses before sending it
        with pytest.raises(ValueError):
            om.check_options(engine, "float", mode, compression, 16, 100, 100)


def test_merge_once_and_warmup_on_the_cluster(cluster):
    settings = cluster.settings(force_merge=True)
    index = open_ingest(settings)
    ds, vecs = docs(60, seed=12)
    with index.loading():
        for start in range(0, 60, 20):
            index.upsert(ds[start:start + 20])
            index.save()
    stats = cluster.client().indices.stats(index=index.index, metric="segments")
    assert stats["indices"][index.index]["primaries"]["segments"]["count"] <= 1
    got = cluster.client().transport.perform_request("GET", f"/_plugins/_knn/warmup/{index.index}")
    assert got["_shards"]["failed"] == 0
    assert index.search(vecs[4], k=1)[0].id == "p4"
