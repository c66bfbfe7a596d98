"""`python -m ingest folder PATH --backend opensearch` against the strict fake: every photo indexed
once, a re-run writes nothing, a failing cluster exits 1 with the cause."""

from __future__ import annotations

import json

import pytest

from clipsearch.config import Settings
from clipsearch.index import open_index
from clipsearch.index.opensearch_client import clear_cache

cli = pytest.importorskip("ingest.cli", reason="the ingest package is not on this branch yet")


@pytest.fixture
def env(monkeypatch, fake_opensearch, tiny_model_dir):
    values = {"BACKEND": "opensearch", "OPENSEARCH_URL": fake_opensearch.url, "OPENSEARCH_INDEX": "photos",
              "OPENSEARCH_REPLICAS": "0", "MODEL_PATH": str(tiny_model_dir), "MODEL_ID": "clipsearch/tiny-test",
              "TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    clear_cache()
    yield values
    clear_cache()


def test_folder_ingest_into_opensearch(env, fake_opensearch, photo_folder, tmp_path, capsys):
    argv = ["folder", str(photo_folder), "--backend", "opensearch", "--cache-dir", str(tmp_path / "cache"),
            "--quiet", "--json"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["indexed"] == 12 and summary["index_count"] == 12
    (name,) = fake_opensearch.aliases["photos"]
    assert fake_opensearch.doc_count(name) == 12
    settings = fake_opensearch.indices[name].settings
    assert settings["index.number_of_replicas"] == "0" and "index.refresh_interval" not in settings  # restored

    assert cli.main(argv) == 0  # nothing new: nothing written twice
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["indexed"] == 0
    assert fake_opensearch.doc_count(name) == 12

    settings = Settings.from_env()
    index = open_index(settings.index, settings.opensearch)
    assert (index.model_id, index.count()) == ("clipsearch/tiny-test", 12)
    doc = index.get(index.ids()[0])
    assert doc.metadata["source"] == "folder" and index.search(doc.vector, k=1)[0].id == doc.id

    fake_opensearch.fail(503, times=100)
    assert cli.main(argv) == 1
    assert "503" in capsys.readouterr().err
