"""OPENSEARCH_SERVICE=aoss against the fake in Serverless mode: the collection assigns `_id`s, so
documents are found by their doc_id field; re-writes, retries and resumed runs leave one document
per id; lucene is refused; the alias moves only once the collection answers the load."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from clipsearch.config import OpenSearchSettings, Settings
from clipsearch.errors import BackendUnavailable, NotFound
from clipsearch.index import Document
from clipsearch.index.opensearch import OpenSearchIndex
from clipsearch.index.opensearch_client import clear_cache, make_client
from conftest import REPO, make_image
from fake_opensearch import FakeOpenSearch
from test_opensearch import docs, fast_bulk

DIM = 16
REFRESH = 0.3  # the fake collection's refresh delay (Serverless: 10-60 s)


@pytest.fixture
def aoss():
    with FakeOpenSearch(service="aoss", refresh_seconds=REFRESH) as fake:
        yield fake


def settings_for(fake, alias="vectors", **over) -> OpenSearchSettings:
    env = {"OPENSEARCH_URL": fake.url, "OPENSEARCH_INDEX": alias, "OPENSEARCH_SERVICE": "aoss", "BACKEND": "opensearch"}
    return replace(OpenSearchSettings.from_env(env), **over)


def open_ingest(settings, model_id="org/model-a", dim=DIM, **kw) -> OpenSearchIndex:
    client = make_client(settings)
    return OpenSearchIndex.from_settings(settings, model_id=model_id, dim=dim, client=client,
                                         bulk=fast_bulk(client), **kw)


def per_id(fake, index: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for src in fake.indices[index].docs.values():
        counts[src["doc_id"]] = counts.get(src["doc_id"], 0) + 1
    return counts


def test_the_fake_collection_refuses_custom_ids(aoss):
    import requests

    requests.put(f"{aoss.url}/v", json={"settings": {"index": {"knn": True}}}, timeout=5)
    lines = [{"index": {"_id": "mine"}}, {"x": 1}, {"index": {}}, {"x": 2}]
    raw = "".join(json.dumps(line) + "\n" for line in lines).encode()
    body = requests.post(f"{aoss.url}/v/_bulk", data=raw, headers={"Content-Type": "application/x-ndjson"},
                         timeout=5).json()
    first, second = (item["index"] for item in body["items"])
    assert first["status"] == 400 and "Document ID is not supported" in first["error"]["reason"]
    assert second["status"] == 201 and len(second["_id"]) == 20 and body["errors"] is True
    assert requests.post(f"{aoss.url}/v/_refresh", timeout=5).status_code == 404
    assert requests.get(f"{aoss.url}/_plugins/_knn/warmup/v", timeout=5).status_code == 404


def test_ingest_reingest_get_delete_with_one_document_per_id(aoss):
    settings = settings_for(aoss)
    index = open_ingest(settings)
    ds, vecs = docs(60)
    with index.loading():
        assert index.upsert(ds) == 60
        index.save()
    # When the load ends, the collection answers it: the alias was moved only then.
    assert aoss.aliases == {"vectors": {index.index}} and index.count() == 60
    assert sorted(index.ids()) == sorted(d.id for d in ds)
    assert per_id(aoss, index.index) == {d.id: 1 for d in ds}
    assert all(b'"_id"' not in r.body for r in aoss.requests if r.path.endswith("/_bulk") and b'"index"' in r.body)
    got = index.get("p7")
    np.testing.assert_allclose(got.vector, vecs[7] / np.linalg.norm(vecs[7]), atol=1e-6)
    assert got.metadata == ds[7].metadata
    hits = index.search(vecs[3], k=3)
    assert hits[0].id == "p3" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert "doc_id" not in hits[0].metadata and "vector" not in hits[0].metadata

    # Re-ingest: the same ids again (one with new metadata), two deleted: still one each. p9 is
    # deleted right after its rewrite, before the new copy is searchable: the end of the load
    # removes that copy once it shows.
    changed = Document("p5", vecs[5], {"orientation": "portrait", "width": 1})
    with index.loading():
        index.upsert(ds[:20] + [changed])
        assert index.delete(["p30", "nope"]) == 1
        index.delete(["p9"])
        index.save()
    counts = per_id(aoss, index.index)
    assert set(counts.values()) == {1} and len(counts) == 58 and not {"p9", "p30"} & set(counts)
    assert index.count() == 58 and index.get("p5").metadata == {"orientation": "portrait", "width": 1}
    with pytest.raises(NotFound):
        index.get("p9")


def test_a_resent_bulk_request_leaves_no_duplicate(aoss, caplog):
    """A bulk request applied but unanswered is sent again: without fixed ids that writes every
    document twice, and the end of the load removes the extra copies."""
    index = open_ingest(settings_for(aoss))
    aoss.drop(times=1, path="_bulk", after=True)
    ds, _ = docs(30)
    with caplog.at_level(logging.INFO, "clipsearch.index.opensearch"), index.loading():
        index.upsert(ds)
        assert max(per_id(aoss, index.index).values()) == 2  # duplicated by the re-send
    assert per_id(aoss, index.index) == {d.id: 1 for d in ds} and index.count() == 30
    assert "duplicate" in caplog.text


def test_the_alias_waits_until_the_collection_answers(aoss):
    settings = settings_for(aoss, alias="waits")
    index = open_ingest(settings)
    with index.loading():
        index.upsert(docs(20)[0])
        index.save()
        assert aoss.aliases == {}
    swap = next(i for i, r in enumerate(aoss.requests) if r.path == "/_aliases")
    searches = [r for r in aoss.requests[:swap] if r.path.endswith("/_search")]
    assert len(searches) >= 2  # it looked until everything was searchable
    server = OpenSearchIndex.from_settings(settings, client=make_client(settings))
    assert server.count() == 20 and server.index == index.index


def test_a_collection_that_never_catches_up_keeps_the_alias(aoss):
    index = open_ingest(settings_for(aoss, alias="slow"), settle_wait_s=0.5)
    aoss.refresh_seconds = 60
    with pytest.raises(BackendUnavailable, match="alias was not moved.*run the same ingest again"), index.loading():
        index.upsert(docs(5)[0])
    assert aoss.aliases == {}


def test_lucene_is_refused_before_anything_is_created(aoss):
    settings = settings_for(aoss, engine="lucene")
    with pytest.raises(ValueError, match="Serverless.*does not support the lucene engine.*OPENSEARCH_ENGINE=faiss"):
        open_ingest(settings)
    assert aoss.indices == {}


def test_no_request_serverless_lacks(aoss):
    settings = settings_for(aoss, force_merge=True)
    index = open_ingest(settings)
    with index.loading():
        index.upsert(docs(10)[0])
        index.save()
    index.search(np.ones(DIM), k=2)
    index.count()
    paths = {r.path.split("?")[0].rsplit("/", 1)[-1] for r in aoss.requests}
    assert not paths & {"_refresh", "_settings", "_forcemerge", "segments", "_count"}
    assert not any("warmup" in r.path or "_alias/" in r.path for r in aoss.requests)
    created = json.loads(next(r.body for r in aoss.requests if r.method == "PUT"))
    assert "number_of_replicas" not in created["settings"]["index"]


def test_model_change_on_serverless_moves_the_alias_in_one_request(aoss):
    settings = settings_for(aoss, alias="models")
    a = open_ingest(settings)
    with a.loading():
        a.upsert(docs(5)[0])
    b = open_ingest(settings, model_id="org/model-b", dim=8)
    with b.loading():
        b.upsert(docs(5, dim=8)[0])
    moves = [json.loads(r.body) for r in aoss.requests if r.path == "/_aliases"]
    assert moves[-1] == {"actions": [{"remove": {"index": a.index, "alias": "models"}},
                                     {"add": {"index": b.index, "alias": "models"}}]}
    assert aoss.aliases == {"models": {b.index}}


@pytest.mark.e2e
@pytest.mark.slow
def test_kill_then_resume_into_serverless_then_search_and_more_like_this(tiny_model_dir, tmp_path):
    """kill -9 mid-run, into a collection that makes writes searchable late: the rerun leaves one
    document per image, and the server's text, image-id and filtered queries answer from it."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(24):
        (folder / f"img{i:02d}.jpg").write_bytes(make_image(4000 + i, size=(96, 64)))
    with FakeOpenSearch(service="aoss", refresh_seconds=0.5) as fake:
        env = {**os.environ, "BACKEND": "opensearch", "OPENSEARCH_URL": fake.url, "OPENSEARCH_INDEX": "photos",
               "OPENSEARCH_SERVICE": "aoss", "MODEL_PATH": str(tiny_model_dir), "TORCH_THREADS": "1",
               "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "ingest", "folder", str(folder), "--backend", "opensearch", "--cache-dir",
               str(tmp_path / "cache"), "--quiet", "--batch-size", "2", "--save-every", "1", "--decode-workers", "0"]
        proc = subprocess.Popen(cmd + ["--batch-delay", "0.3"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if sum(fake.doc_count(n) for n in list(fake.indices)) >= 6:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        (name,) = fake.indices
        written = fake.doc_count(name)
        assert 0 < written < 24 and fake.aliases == {}  # killed mid-run, before the alias moved

        done = subprocess.run(cmd + ["--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["index_count"] == 24 and summary["encoded"] + summary["from_cache"] == 24 - \
            summary["skipped"].get("unchanged", 0)
        assert fake.aliases == {"photos": {name}}
        counts = per_id(fake, name)
        assert len(counts) == 24 and set(counts.values()) == {1}

        clear_cache()
        from server.app import App

        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith(("OPENSEARCH_", "BACKEND",
                                                                                     "MODEL_", "TORCH_"))})
        app = App(settings)
        reply = app.handle({"query": "two dogs", "input_type": "text", "k": 5})
        body = json.loads(reply["body"])
        assert reply["statusCode"] == 200 and body["count"] == 5, body
        some_id = body["results"][0]["id"]
        like = json.loads(app.handle({"query": some_id, "input_type": "id", "k": 3})["body"])
        ids = [r["id"] for r in like["results"]]  # the photo itself is left out of its neighbours
        assert len(set(ids)) == 3 and some_id not in ids and like["results"][0]["score"] <= 1.0
        assert app.handle({"query": "0" * 64, "input_type": "id"})["statusCode"] == 404
        clear_cache()
