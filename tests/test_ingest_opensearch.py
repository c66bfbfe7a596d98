"""Ingest into the strict fake OpenSearch (tests/fake_opensearch.py): the embedding cache makes a
second backend cost no downloads and no encoding; folder deletions reach OpenSearch too."""

from __future__ import annotations

import shutil


import numpy as np
import pytest

from clipsearch.config import IndexSettings, OpenSearchSettings
from clipsearch.index import open_index
from clipsearch.index.faiss_index import FaissIndex
from ingest.cli import execute
from unsplash_server import FakeUnsplash


@pytest.fixture
def env(monkeypatch, fake_opensearch, tiny_model_dir):
    from clipsearch.index.opensearch_client import clear_cache

    for k, v in {"OPENSEARCH_URL": fake_opensearch.url, "OPENSEARCH_INDEX": "photos", "OPENSEARCH_REPLICAS": "0",
                 "MODEL_PATH": str(tiny_model_dir), "MODEL_ID": "clipsearch/tiny-test", "TORCH_THREADS": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("BACKEND", raising=False)
    clear_cache()
    yield
    clear_cache()


@pytest.mark.e2e
def test_unsplash_into_faiss_then_opensearch_from_the_cache(env, fake_opensearch, tmp_path):
    with FakeUnsplash() as server:
        ids = server.add_photos(6, {5: ["404"]})
        server.set_archive(ids)
        common = ["unsplash", "--dataset-url", f"{server.url}/lite.zip", "--data-dir", str(tmp_path / "u"),
                  "--cache-dir", str(tmp_path / "cache"), "--quiet", "--decode-workers", "0", "--batch-size", "2",
                  "--retries", "0"]
        first = execute(common + ["--index", str(tmp_path / "idx")])
        assert (first.encoded, first.indexed, len(first.failed)) == (5, 5, 1)
        downloads = sum(server.requests.values())

        into_os = execute(common + ["--backend", "opensearch"])
        assert (into_os.downloaded, into_os.encoded, into_os.from_cache, into_os.indexed) == (0, 0, 5, 5)
        assert into_os.index_count == 5
        assert sum(server.requests.values()) == downloads + 1  # only the 404 was asked again

        again = execute(common + ["--backend", "opensearch"])
        assert (again.encoded, again.indexed) == (0, 0) and again.skipped["already indexed"] == 5

    faiss = FaissIndex.load(tmp_path / "idx")
    remote = open_index(IndexSettings(backend="opensearch"), OpenSearchSettings.from_env())
    assert sorted(remote.ids()) == sorted(faiss.ids())
    for doc_id in faiss.ids():
        a, b = faiss.get(doc_id), remote.get(doc_id)
        assert a.metadata == b.metadata
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-6)


def test_folder_deletions_reach_opensearch(env, fake_opensearch, photo_folder, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    argv = ["folder", str(folder), "--backend", "opensearch", "--cache-dir", str(tmp_path / "cache"), "--quiet",
            "--decode-workers", "0"]
    assert execute(argv).indexed == 12
    next(folder.rglob("*.png")).unlink()
    second = execute(argv)
    assert (second.deleted, second.encoded, second.skipped["unchanged"], second.index_count) == (1, 0, 11, 11)


@pytest.mark.parametrize("service", ["es", "aoss"])
def test_bad_items_are_reported_and_the_load_goes_on(tiny_encoder, tmp_path, service):
    """An id no index can hold (over 512 bytes of UTF-8) and metadata OpenSearch refuses (an
    object where the mapping has a keyword) fail one item each; the others are indexed."""
    from fake_opensearch import FakeOpenSearch

    from clipsearch.index.opensearch import OpenSearchIndex
    from conftest import make_image
    from ingest.cache import NoCache
    from ingest.progress import Summary
    from ingest.runner import Runner, RunnerOptions, Stages
    from ingest.sources.base import Item

    paths = []
    for i in range(6):
        paths.append(tmp_path / f"p{i}.jpg")
        paths[-1].write_bytes(make_image(700 + i))
    items = [Item(str(p), p, f"photo{i}", {"source": "unsplash"}) for i, p in enumerate(paths)]
    items[1].doc_id = "é" * 300  # 300 characters, 600 bytes
    items[4].metadata["photographer"] = {"name": "an object"}
    with FakeOpenSearch(service=service, refresh_seconds=0.05) as fake:
        settings = OpenSearchSettings.from_env({"OPENSEARCH_URL": fake.url, "OPENSEARCH_INDEX": "bad",
                                                "OPENSEARCH_REPLICAS": "0", "OPENSEARCH_SERVICE": service})
        index = OpenSearchIndex.from_settings(settings, model_id=tiny_encoder.model_id, dim=tiny_encoder.dim)
        summary = Summary("unsplash")
        with index.loading():
            options = RunnerOptions(batch_size=3)
            pipe = Runner(Stages.standard(tiny_encoder, index, NoCache(), options), summary, options=options)
            done = pipe.run(items)
            pipe.save()
        failed = dict(summary.failed)
        assert set(failed) == {str(paths[1]), str(paths[4])}
        assert failed[str(paths[1])].startswith("bad_id:") and "600 bytes" in failed[str(paths[1])]
        assert failed[str(paths[4])].startswith("rejected_by_index:") and "photographer" in failed[str(paths[4])]
        assert summary.indexed == 4 and set(done.values()) == {"photo0", "photo2", "photo3", "photo5"}
        assert sorted(index.ids()) == ["photo0", "photo2", "photo3", "photo5"] and index.count() == 4
