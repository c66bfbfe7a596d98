"""The query service's float16 embedded index: half the memory, float32's exact results."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from clipsearch.errors import IndexMissing
from clipsearch.index import Document
from clipsearch.index.faiss_index import FaissIndex
from clipsearch.index.half import HalfVectors
from conftest import REPO

DIM = 32


def near_duplicates(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Clusters of vectors a hair apart: float16 rounding reorders their scores."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Scores within a cluster a few 1e-3 apart: several float16 rounding errors, many float32 ulps.
    vecs = centres[rng.integers(0, len(centres), n)] + 0.01 * rng.standard_normal((n, dim))
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def build(path, vecs, threshold=10**9) -> FaissIndex:
    index = FaissIndex(path, model_id="m/test", dim=vecs.shape[1], hnsw_threshold=threshold)
    index.upsert(Document(f"p{i}", v, {"group": i % 4, "n": i}) for i, v in enumerate(vecs))
    index.save()
    return index


def exact(vecs, q, k, rows=None):
    rows = np.arange(len(vecs)) if rows is None else np.asarray(rows)
    s = vecs[rows] @ q
    order = np.lexsort((rows, -s))[:k]
    return [f"p{r}" for r in rows[order]], s[order]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    vecs = near_duplicates(3000)
    path = tmp_path_factory.mktemp("half") / "idx"
    build(path, vecs)
    return path, vecs


def queries(vecs, n, seed=1):
    rng = np.random.default_rng(seed)
    # Near the data (ties within float16's error), and random.
    q = np.concatenate([vecs[rng.integers(0, len(vecs), n // 2)] + 1e-4 * rng.standard_normal((n // 2, vecs.shape[1])),
                        rng.standard_normal((n - n // 2, vecs.shape[1]))])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_half_index_gives_float32_results_where_float16_scores_would_reorder_them(saved):
    path, vecs = saved
    half, full = FaissIndex.load(path, half=True), FaissIndex.load(path)
    assert half.info()["vectors_in_memory"] == "float16" and full.info()["vectors_in_memory"] == "float32"
    reordered = 0
    for q in queries(vecs, 60):
        for k in (1, 10, 50):
            ids, scores = exact(vecs, q, k)
            got = half.search(q, k=k)
            assert [h.id for h in got] == ids == [h.id for h in full.search(q, k=k)]
            np.testing.assert_allclose([h.score for h in got], np.clip(scores, -1, 1), atol=2e-6)
            s16 = vecs.astype(np.float16).astype(np.float32) @ q
            reordered += [f"p{r}" for r in np.lexsort((np.arange(len(vecs)), -s16))[:k]] != ids
    assert reordered > 10, "the data should make float16's own ranking wrong, or this test proves nothing"


def test_half_index_filters_and_min_score_match_float32(saved):
    path, vecs = saved
    half, full = FaissIndex.load(path, half=True), FaissIndex.load(path)
    for q in queries(vecs, 20, seed=5):
        for filters in ({"group": 2}, {"n": {"gte": 2990}}, {"group": [0, 3], "n": {"lt": 1500}}):
            assert [(h.id, round(h.score, 5)) for h in half.search(q, k=10, filters=filters)] == \
                   [(h.id, round(h.score, 5)) for h in full.search(q, k=10, filters=filters)]
        cut = float(np.sort(vecs @ q)[-7])
        got = half.search(q, k=20, min_score=cut)
        assert [h.id for h in got] == [h.id for h in full.search(q, k=20, min_score=cut)] and len(got) == 7


def test_get_returns_the_float32_vector_and_writes_are_refused(saved):
    path, vecs = saved
    half = FaissIndex.load(path, half=True)
    np.testing.assert_array_equal(half.get("p123").vector, vecs[123])
    assert half.get("p123").metadata == {"group": 3, "n": 123}
    for write in (lambda: half.upsert([Document("x", vecs[0], {})]), lambda: half.delete(["p1"]), half.save):
        with pytest.raises(RuntimeError, match="read-only"):
            write()
    assert half.count() == len(vecs)


def test_a_writer_replacing_the_generation_does_not_break_a_half_reader(tmp_path):
    vecs = near_duplicates(400, seed=2)
    writer = build(tmp_path / "idx", vecs)
    reader = FaissIndex.load(tmp_path / "idx", half=True)
    before = [h.id for h in reader.search(vecs[7], k=5)]
    writer.upsert([Document("new", vecs[7], {})])
    writer.save()  # a new generation; the one the reader opened is deleted
    assert not any((tmp_path / "idx").glob("gen-000001"))
    assert [h.id for h in reader.search(vecs[7], k=5)] == before
    np.testing.assert_array_equal(reader.get("p7").vector, vecs[7])


def test_hnsw_index_loads_half_with_and_without_its_saved_graph(tmp_path):
    vecs = near_duplicates(1200, seed=4)
    build(tmp_path / "idx", vecs, threshold=500)
    full = FaissIndex.load(tmp_path / "idx", hnsw_threshold=500)
    qs = queries(vecs, 20, seed=8)
    expected = [[h.id for h in full.search(q, k=10)] for q in qs]
    assert [[h.id for h in FaissIndex.load(tmp_path / "idx", half=True, hnsw_threshold=500).search(q, k=10)]
            for q in qs] == expected
    next((tmp_path / "idx").glob("gen-*/hnsw.faiss")).unlink()  # the graph is rebuilt from the float32 rows
    rebuilt = FaissIndex.load(tmp_path / "idx", half=True, hnsw_threshold=500)
    recall = np.mean([len({h.id for h in rebuilt.search(q, k=10)} & set(exact(vecs, q, 10)[0])) / 10 for q in qs])
    assert recall >= 0.95


@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "saved-before-checksums"])
@pytest.mark.parametrize("damage", ["truncate", "shape", "dtype"])
def test_damaged_vectors_file_is_reported_not_misread(tmp_path, damage, checksums):
    vecs = near_duplicates(100, seed=6)
    build(tmp_path / "idx", vecs)
    if not checksums:
        manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
        del manifest["files"]
        (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    file = next((tmp_path / "idx").glob("gen-*/vectors.npy"))
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:-100])
    elif damage == "shape":
        np.save(file, vecs[:, :16])
    else:
        np.save(file, vecs.astype(np.float64))
    with pytest.raises(IndexMissing, match="vectors.npy is damaged" if checksums else "inconsistent"):
        FaissIndex.load(tmp_path / "idx", half=True)


def test_half_vectors_search_bound_grows_the_candidates_until_proven(tmp_path):
    """500 rows whose scores all lie within float16's error of each other: no candidate list
    short of all of them proves the top 10, so the search must widen it to every row."""
    rng = np.random.default_rng(3)
    centre = rng.standard_normal(DIM)
    centre /= np.linalg.norm(centre)
    vecs = centre + 5e-3 * rng.standard_normal((500, DIM))  # scores 1 - 4e-4 +- 1e-4, gaps ~1e-6
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vecs)
    hv = HalfVectors(tmp_path / "vectors.npy", len(vecs), DIM)
    assert hv.nbytes == vecs.nbytes // 2
    calls = []
    search = hv._index.search
    hv._index = type("Spy", (), {"search": lambda self, x, n, params=None: (calls.append(n), search(x, n, params=params))[1]})()
    q = centre.astype(np.float32)
    rows, scores = hv.search(q, 10)
    assert [f"p{r}" for r in rows] == exact(vecs, q, 10)[0]
    np.testing.assert_allclose(scores, exact(vecs, q, 10)[1], atol=1e-6)
    assert calls == [42, 168, 500]
    hv.close()


# faiss is imported in both modes: its import (15 MB here, more on hosts with many cores) is paid by
# float16 only while float32 stays under the HNSW threshold, and it is not what this test is about.
# The whole query process, faiss included, is measured by bench/onnx_bench.py.
PEAK = r"""
import sys
import faiss
from clipsearch.index.faiss_index import FaissIndex
index = FaissIndex.load(sys.argv[1], half=sys.argv[2] == "half", hnsw_threshold=10**9)  # exact search
index.search(index.get("p0").vector, k=10)
# VmHWM, not ru_maxrss: that one carries the forking parent's peak across exec.
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024)
"""


def test_half_index_peaks_at_about_half_the_vector_memory(tmp_path):
    n, dim = 60_000, 512  # 123 MB of float32
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    gen = tmp_path / "idx" / "gen-000001"
    gen.mkdir(parents=True)  # written directly: the test is about loading, not saving
    np.save(gen / "vectors.npy", vecs)
    (gen / "ids.json").write_text(json.dumps([f"p{i}" for i in range(n)]))
    (gen / "metadata.jsonl").write_text("{}\n" * n)
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(
        {"format": 1, "model_id": "m", "dim": dim, "count": n, "generation": gen.name}))
    peak = {mode: float(subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "idx"), mode], cwd=REPO,
                                       capture_output=True, text=True, check=True).stdout)
            for mode in ("half", "full")}
    saved_mb = peak["full"] - peak["half"]
    assert saved_mb > 0.35 * vecs.nbytes / 2**20, peak  # about half of 117 MiB, less allocator noise


def test_server_settings_choose_how_the_vectors_are_held(saved):
    from clipsearch.config import IndexSettings
    from clipsearch.index import open_index

    path, _ = saved
    assert open_index(IndexSettings.from_env({"INDEX_PATH": str(path)})).info()["vectors_in_memory"] == "float16"
    assert open_index(IndexSettings.from_env({"INDEX_PATH": str(path), "INDEX_MEMORY": "FLOAT32"})).info()[
        "vectors_in_memory"] == "float32"
    with pytest.raises(ValueError, match="INDEX_MEMORY must be 'float16' or 'float32', got 'int8'"):
        open_index(IndexSettings.from_env({"INDEX_PATH": str(path), "INDEX_MEMORY": "int8"}))
