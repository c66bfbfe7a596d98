"""The embedded FAISS backend: real faiss, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from clipsearch.errors import IndexMissing, InvalidInput, ModelMismatch, NotFound
from clipsearch.images import decode_image
from clipsearch.index import Document
from clipsearch.index.faiss_index import FaissIndex
from conftest import REPO, make_image

DIM = 16


def docs(n, seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    return [
        Document(f"p{i}", vecs[i], {"orientation": ("landscape", "portrait", "squarish")[i % 3],
                                    "width": 100 * i, "photographer_username": f"user{i % 5}", "featured": i % 2 == 0})
        for i in range(n)
    ], vecs


@pytest.fixture(params=["flat", "hnsw"])
def index(request, tmp_path):
    threshold = 10**9 if request.param == "flat" else 50
    return FaissIndex(tmp_path / "idx", model_id="m/test", dim=DIM, hnsw_threshold=threshold)


def exact_top(vecs, q, k, rows=None):
    vn = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    s = vn @ (q / np.linalg.norm(q))
    rows = np.arange(len(vecs)) if rows is None else np.asarray(rows)
    order = rows[np.argsort(-s[rows], kind="stable")][:k]
    return [f"p{i}" for i in order], s[order]


def test_each_document_finds_itself_first_with_score_one(index):
    ds, vecs = docs(300)
    index.upsert(ds)
    for i in range(0, 300, 17):
        hits = index.search(vecs[i], k=5)
        assert hits[0].id == f"p{i}" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert all(-1.0 <= h.score <= 1.0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_exact_search_matches_brute_force(tmp_path):
    ds, vecs = docs(500, seed=3)
    index = FaissIndex(None, model_id="m", dim=DIM)
    index.upsert(ds)
    q = np.random.default_rng(9).standard_normal(DIM)
    ids, scores = exact_top(vecs, q, 10)
    hits = index.search(q, k=10)
    assert [h.id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)


def test_filters_equal_any_of_range_and_bool(index):
    ds, vecs = docs(300)
    index.upsert(ds)
    q = vecs[0]
    hits = index.search(q, k=20, filters={"orientation": "portrait"})
    assert len(hits) == 20 and all(h.metadata["orientation"] == "portrait" for h in hits)
    hits = index.search(q, k=500, filters={"photographer_username": ["user1", "user2"]})
    assert len(hits) == 120 and {h.metadata["photographer_username"] for h in hits} == {"user1", "user2"}
    hits = index.search(q, k=500, filters={"width": {"gte": 1000, "lt": 2000}})
    assert sorted(h.metadata["width"] for h in hits) == list(range(1000, 2000, 100))
    hits = index.search(q, k=500, filters={"featured": True, "orientation": "landscape"})
    assert len(hits) == 50 and all(h.metadata["featured"] is True and h.metadata["orientation"] == "landscape" for h in hits)
    assert index.search(q, k=5, filters={"width": 1}) == []  # 1 is not True and no width is 1
    assert index.search(q, k=5, filters={"orientation": "nope"}) == []


def test_filtered_search_returns_k_when_k_match(index):
    """Efficient filtering: a selective filter still yields k results, not a post-filtered few."""
    ds, vecs = docs(600, seed=1)
    index.upsert(ds)
    rows = [i for i in range(600) if i % 3 == 2]
    for q in vecs[:5]:
        hits = index.search(q, k=10, filters={"orientation": "squarish"})
        assert len(hits) == 10
        ids, _ = exact_top(vecs, q, 10, rows)
        assert len(set(h.id for h in hits) & set(ids)) >= 9


def test_min_score(index):
    ds, vecs = docs(200)
    index.upsert(ds)
    hits = index.search(vecs[4], k=200, min_score=0.3)
    assert hits and all(h.score >= 0.3 for h in hits)
    assert len(hits) < 200
    assert [h.id for h in index.search(vecs[4], k=1, min_score=0.999)] == ["p4"]


def test_upsert_replaces_never_duplicates(index):
    ds, vecs = docs(100)
    index.upsert(ds)
    index.upsert(ds[:10])
    assert index.count() == 100 and len(index.ids()) == 100
    new = Document("p3", -vecs[3], {"orientation": "portrait", "note": "replaced"})
    index.upsert([new])
    assert index.count() == 100
    assert index.get("p3").metadata == {"orientation": "portrait", "note": "replaced"}
    assert index.search(-vecs[3], k=1)[0].id == "p3"


def test_get_returns_stored_vector_for_more_like_this(index):
    ds, vecs = docs(100)
    index.upsert(ds)
    doc = index.get("p42")
    np.testing.assert_allclose(doc.vector, vecs[42] / np.linalg.norm(vecs[42]), atol=1e-6)
    assert index.search(doc.vector, k=1)[0].id == "p42"
    with pytest.raises(NotFound, match="p999"):
        index.get("p999")


def test_delete(index):
    ds, vecs = docs(120)
    index.upsert(ds)
    assert index.delete(["p0", "p5", "nope", "p5"]) == 2
    assert index.count() == 118
    assert "p0" not in index.ids() and "p119" in index.ids()
    assert index.search(vecs[0], k=1)[0].id != "p0"
    assert index.search(vecs[119], k=1)[0].id == "p119"  # the moved row still answers
    with pytest.raises(NotFound):
        index.get("p5")


def test_save_load_round_trip(index, tmp_path):
    ds, vecs = docs(200)
    index.upsert(ds)
    index.save()
    manifest = json.loads((index.path / "manifest.json").read_text())
    assert manifest["model_id"] == "m/test" and manifest["dim"] == DIM and manifest["count"] == 200
    loaded = FaissIndex.load(index.path, hnsw_threshold=index.hnsw_threshold)
    assert loaded.count() == 200 and loaded.info()["index_type"] == index.info()["index_type"]
    for i in (0, 77, 199):
        assert loaded.search(vecs[i], k=1)[0].id == f"p{i}"
        assert loaded.get(f"p{i}").metadata == ds[i].metadata
    if manifest["index_type"] == "hnsw":
        assert (index.path / manifest["generation"] / "hnsw.faiss").is_file()
    # a second save writes a new generation and removes the old one
    loaded.delete(["p1"])
    loaded.save()
    gens = sorted(p.name for p in index.path.glob("gen-*"))
    assert gens == [json.loads((index.path / "manifest.json").read_text())["generation"]]
    assert FaissIndex.load(index.path).count() == 199


def test_killed_writer_leaves_the_previous_generation_readable(tmp_path):
    path = tmp_path / "idx"
    first = FaissIndex(path, model_id="m", dim=DIM)
    first.upsert(docs(50)[0])
    first.save()
    # A writer that dies after writing its data but before the manifest: the stray directory
    # and temp files must not break loading, and the next save must clean them up.
    (path / "gen-000002").mkdir()
    (path / "gen-000002" / "vectors.npy").write_bytes(b"garbage")
    (path / ".gen-000003.tmp").mkdir()
    loaded = FaissIndex.load(path)
    assert loaded.count() == 50
    loaded.upsert(docs(60, seed=1)[0][50:])
    loaded.save()
    assert FaissIndex.load(path).count() == 60


def test_kill_minus_nine_during_saves(tmp_path):
    """A real process killed with SIGKILL while saving in a loop: the index always loads."""
    path = tmp_path / "idx"
    script = f"""
import numpy as np, sys
sys.path.insert(0, {str(REPO)!r})
from clipsearch.index.faiss_index import FaissIndex
from clipsearch.index import Document
idx = FaissIndex({str(path)!r}, model_id="m", dim={DIM})
rng = np.random.default_rng(0)
i = 0
while True:
    idx.upsert([Document(f"d{{i + j}}", rng.standard_normal({DIM}), {{"n": i + j}}) for j in range(200)])
    i += 200
    idx.save()
    print(i, flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(4):
        proc.stdout.readline()
    proc.kill()
    proc.wait()
    loaded = FaissIndex.load(path)
    assert loaded.count() >= 800 and loaded.count() % 200 == 0
    assert len(set(loaded.ids())) == loaded.count()


def test_missing_index_says_how_to_create_it(tmp_path):
    with pytest.raises(IndexMissing, match="python -m ingest"):
        FaissIndex.load(tmp_path / "nowhere")


def test_open_refuses_another_model(tmp_path):
    idx = FaissIndex(tmp_path / "i", model_id="model/a", dim=DIM)
    idx.upsert(docs(3)[0])
    idx.save()
    with pytest.raises(ModelMismatch, match="model/a"):
        FaissIndex.open(tmp_path / "i", model_id="model/b", dim=DIM)
    with pytest.raises(ModelMismatch):
        FaissIndex.open(tmp_path / "i", model_id="model/a", dim=32)
    assert FaissIndex.open(tmp_path / "i", model_id="model/a", dim=DIM).count() == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vector": np.zeros(DIM)}, "all zeros"),
        ({"vector": np.ones(DIM + 1)}, "dimensions"),
        ({"vector": np.full(DIM, np.nan)}, "NaN"),
        ({"k": 0}, "k must be"),
        ({"k": -3}, "k must be"),
        ({"k": 2.5}, "k must be"),
        ({"k": True}, "k must be"),
        ({"min_score": 2}, "min_score"),
        ({"min_score": "high"}, "min_score"),
        ({"filters": ["orientation"]}, "filters must be an object"),
        ({"filters": {"orientation": {"near": 1}}}, "range"),
        ({"filters": {"width": {"gte": "wide"}}}, "finite number"),
        ({"filters": {"a-b": 1}}, "field name"),
        ({"filters": {"x": {"nested": {"deep": 1}}}}, "range"),
        ({"filters": {"x": [[1]]}}, "values must be"),
        ({"filters": {"x": []}}, "1 to 100"),
        ({"filters": {"x": float("nan")}}, "finite"),
    ],
)
def test_bad_queries_raise_invalid_input(kwargs, message):
    index = FaissIndex(None, model_id="m", dim=DIM)
    index.upsert(docs(10)[0])
    args = {"vector": np.ones(DIM), "k": 3} | kwargs
    with pytest.raises(InvalidInput, match=message):
        index.search(args.pop("vector"), **args)


@pytest.mark.parametrize(
    "doc, message",
    [
        (Document("", np.ones(DIM)), "id"),
        (Document(None, np.ones(DIM)), "id"),  # type: ignore[arg-type]
        (Document("x", np.ones(DIM + 2)), "dimensions"),
        (Document("x", np.zeros(DIM)), "zeros"),
        (Document("x", np.full(DIM, np.inf)), "NaN or infinity"),
        (Document("x", np.ones(DIM), metadata="nope"), "metadata"),  # type: ignore[arg-type]
    ],
)
def test_bad_documents_are_refused_and_nothing_is_written(doc, message):
    index = FaissIndex(None, model_id="m", dim=DIM)
    index.upsert(docs(5)[0])
    with pytest.raises(InvalidInput, match=message):
        index.upsert([Document("good", np.ones(DIM)), doc])
    assert index.count() == 5


def test_empty_index_and_k_larger_than_collection(index):
    assert index.search(np.ones(DIM), k=10) == []
    index.upsert(docs(3)[0])
    assert len(index.search(np.ones(DIM), k=100)) == 3


def test_indexed_image_searched_by_itself_comes_first(tiny_encoder, tmp_path):
    images = [decode_image(make_image(i, size=(96, 64))) for i in range(20)]
    vecs = tiny_encoder.encode_images(images)
    index = FaissIndex(tmp_path / "i", model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
    index.upsert(Document(f"img{i}", v, {"n": i}) for i, v in enumerate(vecs))
    for i in (0, 7, 19):
        hit = index.search(tiny_encoder.encode_images([images[i]])[0], k=3)[0]
        assert hit.id == f"img{i}" and hit.score == pytest.approx(1.0, abs=1e-4)
    text_hits = index.search(tiny_encoder.encode_text("two dogs on a beach")[0], k=20)
    assert len(text_hits) == 20 and all(-1.0 <= h.score <= 1.0 for h in text_hits)


def test_hnsw_recall_on_clustered_vectors(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, 64))
    vecs = (centers[rng.integers(0, 50, 5000)] + 0.35 * rng.standard_normal((5000, 64))).astype(np.float32)
    index = FaissIndex(None, model_id="m", dim=64, hnsw_threshold=1000)
    index.upsert(Document(f"p{i}", v) for i, v in enumerate(vecs))
    queries = centers[rng.integers(0, 50, 30)] + 0.35 * rng.standard_normal((30, 64))
    recall = np.mean([
        len({h.id for h in index.search(q, k=10)} & set(exact_top(vecs, q, 10)[0])) / 10 for q in queries
    ])
    assert index.info()["index_type"] == "hnsw"
    assert recall >= 0.9
