"""End to end with BACKEND=opensearch: `python -m ingest folder PATH --backend opensearch` fills
the strict fake, then the real Lambda emulator + gateway (server.local.LocalLambda) serve it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import REPO

from server.local import LocalLambda

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def post(url: str, body: dict) -> tuple[int, dict[str, str], dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_ingest_then_serve_through_the_emulator(fake_opensearch, tiny_model_dir, photo_folder, tmp_path):
    env = {"BACKEND": "opensearch", "OPENSEARCH_URL": fake_opensearch.url, "OPENSEARCH_INDEX": "photos",
           "OPENSEARCH_REPLICAS": "0", "MODEL_PATH": str(tiny_model_dir), "TORCH_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "ingest", "folder", str(photo_folder), "--backend", "opensearch",
                           "--cache-dir", str(tmp_path / "cache"), "--quiet", "--json"],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["index_count"] == 12
    (name,) = fake_opensearch.aliases["photos"]

    with LocalLambda(env=env, log=tmp_path / "stack.log", startup_timeout_s=120) as stack:
        assert stack.ready_status == 200, (tmp_path / "stack.log").read_text()[-3000:]
        status, _, body = post(stack.search_url, {"query": "two dogs", "input_type": "text", "k": 5,
                                                  "filters": {"orientation": "landscape"}})
        assert status == 200 and body["count"] == 5
        files = {str(p.relative_to(photo_folder)) for p in photo_folder.rglob("*") if p.is_file()}
        assert all(r["orientation"] == "landscape" and r["path"] in files for r in body["results"])
        searches = [r for r in fake_opensearch.requests if r.path == f"/{name}/_search"]
        assert searches and b'"knn"' in searches[-1].body  # answered by OpenSearch, not a local index

        fake_opensearch.fail(503, times=100, path="_search")
        status, headers, body = post(stack.search_url, {"query": "two dogs", "input_type": "text"})
        assert status == 503 and body["error"]["code"] == "backend_unavailable" and int(headers["Retry-After"]) > 0
        fake_opensearch.clear_faults()
        assert post(stack.search_url, {"query": "a red car", "input_type": "text"})[0] == 200
